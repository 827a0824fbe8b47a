//! Hand-written types for the command table (`table.rs` is generated from a live Redis and
//! only contains data of these types), plus name lookup.
//!
//! The shapes mirror what Redis 7.0 reports in `COMMAND` / `COMMAND INFO`: one entry per
//! command, container commands (CONFIG, CLIENT, ...) carry their subcommands, key
//! specifications describe where the keys are in an argument vector.

use super::table::COMMANDS;

/// One command (or subcommand) as Redis describes it in `COMMAND INFO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandSpec {
    /// Lowercase name; subcommands are named `"parent|sub"` as Redis does.
    pub name: &'static str,
    /// Redis arity: positive means exactly that many arguments (name included), negative
    /// means at least `-arity`.
    pub arity: i32,
    /// Bit set of the `F_*` constants.
    pub flags: u32,
    /// Legacy (first, last, step) key positions, as reported by Redis.
    pub first_key: i32,
    pub last_key: i32,
    pub step: i32,
    /// ACL categories in Redis's order, e.g. `"@read"`.
    pub acl_categories: &'static [&'static str],
    /// Command tips, e.g. `"nondeterministic_output"`.
    pub tips: &'static [&'static str],
    pub key_specs: &'static [KeySpec],
    /// Subcommands sorted by name (Redis reports them in hash order, which changes from
    /// one server start to the next).
    pub subcommands: &'static [CommandSpec],
}

/// One key specification (Redis 7 "key-specs").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySpec {
    /// Bit set of the `KS_*` constants.
    pub flags: u32,
    /// Free text; empty when Redis has no notes for this spec.
    pub notes: &'static str,
    pub begin: BeginSearch,
    pub find: FindKeys,
}

/// Where the search for the first key starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BeginSearch {
    /// The first key is at this argument index.
    Index(i32),
    /// The first key follows `keyword`, searched from `start_from` (forwards when positive,
    /// backwards from the end when negative).
    Keyword { keyword: &'static str, start_from: i32 },
    /// The keys cannot be found from the spec (e.g. SORT's BY/GET/STORE).
    Unknown,
}

/// How the keys are found once the first is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FindKeys {
    /// `last_key` relative to the first key (negative: relative to the end), every `step`
    /// arguments; with `limit > 0` and `last_key == -1`, only `1/limit` of the remaining
    /// arguments are keys.
    Range {
        last_key: i32,
        step: i32,
        limit: i32,
    },
    /// The number of keys is in the argument at `first + keynum_idx`; the keys start at
    /// `first + first_key`, every `step` arguments.
    Keynum {
        keynum_idx: i32,
        first_key: i32,
        step: i32,
    },
    Unknown,
}

// Command flags, in the order Redis 7.0 lists them in `COMMAND INFO` (that order is the
// order of `FLAG_NAMES`, which is what an encoder must follow).
pub const F_WRITE: u32 = 1 << 0;
pub const F_READONLY: u32 = 1 << 1;
pub const F_DENYOOM: u32 = 1 << 2;
pub const F_MODULE: u32 = 1 << 3;
pub const F_ADMIN: u32 = 1 << 4;
pub const F_PUBSUB: u32 = 1 << 5;
pub const F_NOSCRIPT: u32 = 1 << 6;
pub const F_BLOCKING: u32 = 1 << 7;
pub const F_LOADING: u32 = 1 << 8;
pub const F_STALE: u32 = 1 << 9;
pub const F_SKIP_MONITOR: u32 = 1 << 10;
pub const F_SKIP_SLOWLOG: u32 = 1 << 11;
pub const F_ASKING: u32 = 1 << 12;
pub const F_FAST: u32 = 1 << 13;
pub const F_NO_AUTH: u32 = 1 << 14;
pub const F_MAY_REPLICATE: u32 = 1 << 15;
pub const F_NO_MANDATORY_KEYS: u32 = 1 << 16;
pub const F_NO_ASYNC_LOADING: u32 = 1 << 17;
pub const F_NO_MULTI: u32 = 1 << 18;
pub const F_MOVABLEKEYS: u32 = 1 << 19;
pub const F_ALLOW_BUSY: u32 = 1 << 20;

/// Command flag bits and their Redis names, in Redis's reply order.
pub const FLAG_NAMES: &[(u32, &str)] = &[
    (F_WRITE, "write"),
    (F_READONLY, "readonly"),
    (F_DENYOOM, "denyoom"),
    (F_MODULE, "module"),
    (F_ADMIN, "admin"),
    (F_PUBSUB, "pubsub"),
    (F_NOSCRIPT, "noscript"),
    (F_BLOCKING, "blocking"),
    (F_LOADING, "loading"),
    (F_STALE, "stale"),
    (F_SKIP_MONITOR, "skip_monitor"),
    (F_SKIP_SLOWLOG, "skip_slowlog"),
    (F_ASKING, "asking"),
    (F_FAST, "fast"),
    (F_NO_AUTH, "no_auth"),
    (F_MAY_REPLICATE, "may_replicate"),
    (F_NO_MANDATORY_KEYS, "no_mandatory_keys"),
    (F_NO_ASYNC_LOADING, "no_async_loading"),
    (F_NO_MULTI, "no_multi"),
    (F_MOVABLEKEYS, "movablekeys"),
    (F_ALLOW_BUSY, "allow_busy"),
];

// Key-spec flags, in Redis's reply order.
pub const KS_RO: u32 = 1 << 0;
pub const KS_RW: u32 = 1 << 1;
pub const KS_OW: u32 = 1 << 2;
pub const KS_RM: u32 = 1 << 3;
pub const KS_ACCESS: u32 = 1 << 4;
pub const KS_UPDATE: u32 = 1 << 5;
pub const KS_INSERT: u32 = 1 << 6;
pub const KS_DELETE: u32 = 1 << 7;
pub const KS_NOT_KEY: u32 = 1 << 8;
pub const KS_INCOMPLETE: u32 = 1 << 9;
pub const KS_VARIABLE_FLAGS: u32 = 1 << 10;

/// Key-spec flag bits and their Redis names, in Redis's reply order.
pub const KEY_SPEC_FLAG_NAMES: &[(u32, &str)] = &[
    (KS_RO, "RO"),
    (KS_RW, "RW"),
    (KS_OW, "OW"),
    (KS_RM, "RM"),
    (KS_ACCESS, "access"),
    (KS_UPDATE, "update"),
    (KS_INSERT, "insert"),
    (KS_DELETE, "delete"),
    (KS_NOT_KEY, "not_key"),
    (KS_INCOMPLETE, "incomplete"),
    (KS_VARIABLE_FLAGS, "variable_flags"),
];

impl CommandSpec {
    /// Whether the command has flag(s) `f` (all of them).
    #[inline]
    pub const fn has(&self, f: u32) -> bool {
        self.flags & f == f
    }

    /// Whether `argc` arguments (the name included) satisfy the arity.
    #[inline]
    pub const fn arity_ok(&self, argc: usize) -> bool {
        if self.arity >= 0 {
            argc == self.arity as usize
        } else {
            argc >= self.arity.unsigned_abs() as usize
        }
    }

    /// The part of the name after `parent|` for a subcommand, else the whole name.
    pub fn short_name(&self) -> &'static str {
        match self.name.find('|') {
            Some(i) => &self.name[i + 1..],
            None => self.name,
        }
    }
}

/// Compares `name` (lowercase ASCII) with `input` lowercased, without allocating.
fn cmp_lower(name: &[u8], input: &[u8]) -> std::cmp::Ordering {
    let n = name.len().min(input.len());
    for i in 0..n {
        let c = name[i].cmp(&input[i].to_ascii_lowercase());
        if c.is_ne() {
            return c;
        }
    }
    name.len().cmp(&input.len())
}

/// Finds a top-level command by name, case-insensitively.
///
/// Runs on every request, so it is a hash probe rather than a search: the
/// name is lowercased into a stack buffer while its hash is computed, then an
/// open-addressing index over [`COMMANDS`] (built once, load factor below
/// 1/4) is probed, nearly always once. Before, a binary search confined to
/// the commands sharing the name's first letter cost about 350 instructions
/// per GET (callgrind, GET -P 16 through the proxy); this costs under 60.
pub fn lookup(name: &[u8]) -> Option<&'static CommandSpec> {
    if name.is_empty() || name.len() > MAX_NAME {
        return None;
    }
    let mut lower = [0u8; MAX_NAME];
    let mut h = FNV_OFFSET;
    for (d, &b) in lower.iter_mut().zip(name) {
        let c = b.to_ascii_lowercase();
        *d = c;
        h = (h ^ c as u64).wrapping_mul(FNV_PRIME);
    }
    let lower = &lower[..name.len()];
    let index = name_index();
    let mut slot = (h as usize) & INDEX_MASK;
    loop {
        let i = *index.get(slot)?;
        let c = COMMANDS.get(i as usize)?; // EMPTY is past the end: not found
        if c.name.as_bytes() == lower {
            return Some(c);
        }
        slot = (slot + 1) & INDEX_MASK;
    }
}

/// Longest top-level command name the index holds (`georadiusbymember_ro`
/// is 20); longer input is no command.
const MAX_NAME: usize = 32;
/// Slots in the name index: a power of two, over 4x the command count.
const INDEX_SLOTS: usize = 1024;
const INDEX_MASK: usize = INDEX_SLOTS - 1;
/// An empty slot: an index past the end of [`COMMANDS`].
const EMPTY: u16 = u16::MAX;
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a of a lowercase name, as [`lookup`] computes it.
fn name_hash(name: &[u8]) -> u64 {
    name.iter()
        .fold(FNV_OFFSET, |h, &c| (h ^ c as u64).wrapping_mul(FNV_PRIME))
}

/// The open-addressing index: slot -> position in [`COMMANDS`], or [`EMPTY`].
fn name_index() -> &'static [u16; INDEX_SLOTS] {
    static INDEX: std::sync::OnceLock<[u16; INDEX_SLOTS]> = std::sync::OnceLock::new();
    INDEX.get_or_init(|| {
        let mut idx = [EMPTY; INDEX_SLOTS];
        for (i, c) in COMMANDS.iter().enumerate() {
            let mut slot = (name_hash(c.name.as_bytes()) as usize) & INDEX_MASK;
            while idx[slot] != EMPTY {
                slot = (slot + 1) & INDEX_MASK;
            }
            idx[slot] = i as u16;
        }
        idx
    })
}

/// Finds subcommand `sub` (e.g. `b"setinfo"`) of `parent` (e.g. CLIENT), case-insensitively.
pub fn lookup_sub(parent: &CommandSpec, sub: &[u8]) -> Option<&'static CommandSpec> {
    let skip = parent.name.len() + 1;
    parent
        .subcommands
        .binary_search_by(|c| cmp_lower(c.name.as_bytes().get(skip..).unwrap_or(b""), sub))
        .ok()
        .and_then(|i| parent.subcommands.get(i))
}

/// Resolves an argument vector to its command the way Redis does: a container command
/// with at least one more argument resolves to the subcommand named by `args[1]` (`None`
/// when there is no such subcommand); otherwise the command itself.
pub fn lookup_argv(args: &[&[u8]]) -> Option<&'static CommandSpec> {
    let base = lookup(args.first()?)?;
    match args.get(1) {
        Some(sub) if !base.subcommands.is_empty() => lookup_sub(base, sub),
        _ => Some(base),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_finds_every_command_in_any_case() {
        for c in COMMANDS {
            assert!(std::ptr::eq(lookup(c.name.as_bytes()).unwrap(), c), "{}", c.name);
            let upper = c.name.to_ascii_uppercase();
            assert!(std::ptr::eq(lookup(upper.as_bytes()).unwrap(), c), "{upper}");
        }
        assert!(lookup(b"nosuchcommand").is_none());
        assert!(lookup(b"").is_none());
        assert!(lookup(b"{get").is_none());
        assert!(lookup(&[b'a'; 100]).is_none());
        assert!(lookup(b"GET\0").is_none());
    }

    #[test]
    fn the_name_index_fits_every_command() {
        assert!(COMMANDS.len() * 4 < INDEX_SLOTS);
        assert!(COMMANDS.len() < EMPTY as usize);
        assert!(COMMANDS.iter().all(|c| !c.name.is_empty() && c.name.len() <= MAX_NAME));
        assert!(COMMANDS.iter().all(|c| c.name.bytes().all(|b| !b.is_ascii_uppercase())));
    }
}
