//! Which arguments of a request are keys.
//!
//! [`key_indices`] follows Redis 7.0's `getKeysFromCommandWithSpecs` (db.c): the key specs
//! are interpreted generically (`getKeysUsingKeySpecs`), and when they cannot give a
//! complete answer (an `unknown` or `incomplete` spec, an unparsable `numkeys`, ...) or
//! their flags are `variable_flags`, the command's special key procedure is used instead
//! (`sortGetKeys`, `migrateGetKeys`, `evalGetKeys`, ...), re-implemented here by name. The
//! result is what `COMMAND GETKEYS` would list for the same arguments.
//!
//! Client input is untrusted: nothing here panics or indexes out of bounds, whatever the
//! arguments.

use super::key_procs::{c_eq_ignore_case, run_proc, special_proc, string2ll};
pub use super::spec::*;

/// Why [`key_indices`] refuses to vouch for its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeysError {
    /// The argument count does not satisfy the command's arity: Redis replies
    /// `ERR wrong number of arguments`.
    Arity,
    /// The key arguments cannot be located reliably (bad or out-of-range `numkeys`, a
    /// keyed command with no key, unbalanced key/value or STREAMS lists, ...): Redis
    /// would reject the command, or `COMMAND GETKEYS` would refuse it.
    Malformed,
}

impl std::fmt::Display for KeysError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeysError::Arity => "wrong number of arguments",
            KeysError::Malformed => "cannot locate the key arguments",
        })
    }
}

impl std::error::Error for KeysError {}

/// Fills `out` (cleared first) with the indices into `args` of the key arguments of a
/// request for `spec` (`args[0]` is the command name; for a subcommand, `args[1]` is the
/// subcommand name and `spec` the subcommand's spec, see [`lookup_argv`]).
///
/// `out` always ends up holding what `COMMAND GETKEYS` would list for these arguments
/// (empty where it would reply with an error), in the same order. `Ok(())` means that list
/// is the complete, trustworthy key set; on `Err` the caller should refuse the request (or
/// let a backend produce Redis's own error) rather than route it by `out`.
pub fn key_indices(spec: &CommandSpec, args: &[&[u8]], out: &mut Vec<usize>) -> Result<(), KeysError> {
    // Most requests name one key at a fixed place (GET, SET, HGET, INCR ...):
    // for a command whose legacy key range is that one place and whose keys
    // cannot move, Redis itself trusts the range, and so can this (the test
    // `the_one_key_shortcut_agrees_with_the_specs` checks every such command
    // against the general interpretation below). It saves about 100
    // instructions per request (bench/callgrind.sh).
    if spec.flags & F_MOVABLEKEYS == 0
        && spec.first_key > 0
        && spec.last_key == spec.first_key
        && matches!(spec.key_specs, [ks] if ks.flags & KS_NOT_KEY == 0)
        && (spec.first_key as usize) < args.len()
        && spec.arity_ok(args.len())
    {
        out.clear();
        out.push(spec.first_key as usize);
        return Ok(());
    }
    key_indices_by_specs(spec, args, out)
}

/// [`key_indices`] without the one-key shortcut: the key specs interpreted,
/// then the special procedures.
fn key_indices_by_specs(spec: &CommandSpec, args: &[&[u8]], out: &mut Vec<usize>) -> Result<(), KeysError> {
    out.clear();
    let all_flags = spec.key_specs.iter().fold(0, |acc, ks| acc | ks.flags);
    let has_keyspec = spec.key_specs.iter().any(|ks| ks.flags & KS_NOT_KEY == 0);
    let has_varflags = all_flags & KS_VARIABLE_FLAGS != 0;
    let special = special_proc(spec.name);

    let mut malformed = false;
    let mut resolved = false;
    if has_keyspec && !has_varflags {
        match keys_from_specs(spec, args, out) {
            Ok(suspect) => {
                resolved = true;
                malformed |= suspect;
            }
            Err(e) => {
                out.clear();
                // Unknown/incomplete specs simply need the special procedure; a bad
                // argument that the strict spec parser rejected makes the request
                // malformed even where the lenient procedure finds keys.
                malformed |= e == SpecError::Invalid;
            }
        }
    }
    if let Some(p) = special.filter(|_| !resolved) {
        malformed |= run_proc(p, args, out);
    }

    // `COMMAND GETKEYS` refuses a keyed command for which no key was found, unless keys
    // are optional for it (EVAL 0 keys, ...).
    let has_keys = has_keyspec || special.is_some();
    if out.is_empty() && has_keys && !spec.has(F_NO_MANDATORY_KEYS) {
        malformed = true;
    }
    if !spec.arity_ok(args.len()) {
        return Err(KeysError::Arity);
    }
    if malformed {
        return Err(KeysError::Malformed);
    }
    Ok(())
}

/// Why the generic key-spec interpretation gave up (Redis's `invalid_spec`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SpecError {
    /// The arguments do not fit the spec (bad numkeys, positions out of range).
    Invalid,
    /// `numkeys` is 0: Redis treats it as invalid; fine for commands whose keys are
    /// optional, left to the final emptiness check otherwise.
    ZeroKeys,
    /// An `unknown` begin/find or an `incomplete` spec: only the special procedure knows.
    Unsupported,
}

/// Redis's `getKeysUsingKeySpecs` (default search flags). `Ok(true)` when keys were found
/// but the arguments are visibly unbalanced (MSET with an odd tail, an odd STREAMS list).
fn keys_from_specs(spec: &CommandSpec, args: &[&[u8]], out: &mut Vec<usize>) -> Result<bool, SpecError> {
    // i64 throughout: Redis uses int, but nothing here may overflow on hostile input.
    let argc = args.len() as i64;
    let mut suspect = false;
    for ks in spec.key_specs {
        if ks.flags & KS_NOT_KEY != 0 {
            continue;
        }
        let mut first: i64 = match ks.begin {
            BeginSearch::Index(pos) => {
                if pos < 1 {
                    return Err(SpecError::Invalid);
                }
                pos as i64
            }
            BeginSearch::Keyword { keyword, start_from } => match find_keyword(args, keyword, start_from) {
                Some(i) => i as i64 + 1,
                // Keyword absent: this spec contributes no key.
                None => continue,
            },
            BeginSearch::Unknown => return Err(SpecError::Unsupported),
        };

        let (last, step) = match ks.find {
            FindKeys::Range { last_key, step, limit } => {
                let last_key = last_key as i64;
                let last = if last_key >= 0 {
                    first + last_key
                } else if limit == 0 {
                    argc + last_key
                } else {
                    let limit = limit as i64;
                    if (argc - first) % limit != 0 {
                        suspect = true; // e.g. XREAD STREAMS a b 0
                    }
                    first + ((argc - first) / limit + last_key)
                };
                if last_key < 0 && step > 1 && (last - first + 1) % step as i64 != 0 {
                    suspect = true; // e.g. MSET a 1 b
                }
                (last, step as i64)
            }
            FindKeys::Keynum {
                keynum_idx,
                first_key,
                step,
            } => {
                let at = first + keynum_idx as i64;
                let raw = usize::try_from(at)
                    .ok()
                    .and_then(|i| args.get(i))
                    .ok_or(SpecError::Invalid)?;
                let numkeys = string2ll(raw).ok_or(SpecError::Invalid)?;
                if numkeys < 0 {
                    return Err(SpecError::Invalid);
                }
                if numkeys == 0 {
                    return Err(SpecError::ZeroKeys);
                }
                if numkeys > i32::MAX as i64 {
                    suspect = true; // Redis truncates it to int; the command rejects it
                }
                first += first_key as i64;
                // Redis: `last = first + (int)numkeys - 1`.
                (first + (numkeys as i32) as i64 - 1, step as i64)
            }
            FindKeys::Unknown => return Err(SpecError::Unsupported),
        };

        if step <= 0 || last >= argc || last < first || first >= argc {
            return Err(SpecError::Invalid);
        }
        let mut i = first;
        while i <= last {
            out.push(i as usize);
            i += step;
        }
        if ks.flags & KS_INCOMPLETE != 0 {
            return Err(SpecError::Unsupported);
        }
    }
    Ok(suspect)
}

/// The keyword search of `getKeysUsingKeySpecs`: forwards from `start_from` up to (not
/// including) the last argument, or backwards from `argc + start_from` down to (not
/// including) argument 1. Returns the keyword's index.
fn find_keyword(args: &[&[u8]], keyword: &str, start_from: i32) -> Option<usize> {
    let argc = args.len() as i64;
    let start_from = start_from as i64;
    let (start, end) = if start_from > 0 {
        (start_from, argc - 1)
    } else {
        (argc + start_from, 1)
    };
    let up = start <= end;
    let mut i = start;
    while i != end {
        if i >= argc || i < 1 {
            break;
        }
        if c_eq_ignore_case(args[i as usize], keyword) {
            return Some(i as usize);
        }
        i += if up { 1 } else { -1 };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<&[u8]> {
        s.split(' ').map(str::as_bytes).collect()
    }

    fn keys(line: &str) -> (Vec<usize>, Result<(), KeysError>) {
        let args = argv(line);
        let spec = lookup_argv(&args).expect("known command");
        let mut out = vec![99];
        let r = key_indices(spec, &args, &mut out);
        (out, r)
    }

    fn ok(line: &str) -> Vec<usize> {
        let (out, r) = keys(line);
        assert_eq!(r, Ok(()), "{line}");
        out
    }

    #[test]
    fn lookup_is_case_insensitive_and_exact() {
        assert_eq!(lookup(b"GET").map(|c| c.name), Some("get"));
        assert_eq!(lookup(b"gEt").map(|c| c.name), Some("get"));
        assert!(lookup(b"ge").is_none());
        assert!(lookup(b"gett").is_none());
        assert!(lookup(b"").is_none());
        assert!(lookup(b"\xff\x00").is_none());
        let client = lookup(b"client").expect("client");
        assert_eq!(lookup_sub(client, b"SETNAME").map(|c| c.name), Some("client|setname"));
        assert!(lookup_sub(client, b"nosuch").is_none());
        assert_eq!(
            lookup_argv(&argv("object ENCODING k")).map(|c| c.name),
            Some("object|encoding")
        );
        assert_eq!(lookup_argv(&argv("object")).map(|c| c.name), Some("object"));
        assert!(lookup_argv(&argv("object nosuch k")).is_none());
        assert!(lookup_argv(&[]).is_none());
    }

    #[test]
    fn table_is_sorted_for_binary_search() {
        use super::super::table::COMMANDS;
        for w in COMMANDS.windows(2) {
            assert!(w[0].name < w[1].name, "{} / {}", w[0].name, w[1].name);
        }
        for c in COMMANDS {
            for w in c.subcommands.windows(2) {
                assert!(w[0].name < w[1].name, "{} / {}", w[0].name, w[1].name);
            }
            for s in c.subcommands {
                assert_eq!(lookup_sub(c, s.short_name().as_bytes()), Some(s));
            }
            assert_eq!(lookup(c.name.to_uppercase().as_bytes()), Some(c));
        }
    }

    #[test]
    fn index_and_range_specs() {
        assert_eq!(ok("get k"), [1]);
        assert_eq!(ok("mset a 1 b 2"), [1, 3]);
        assert_eq!(ok("mget a b c"), [1, 2, 3]);
        assert_eq!(ok("rename a b"), [1, 2]);
        assert_eq!(ok("lcs a b"), [1, 2]);
        assert_eq!(ok("object encoding k"), [2]);
        assert_eq!(ok("xgroup create s g $"), [2]);
        assert_eq!(ok("ping"), [] as [usize; 0]);
        assert_eq!(ok("config get maxmemory"), [] as [usize; 0]);
        // not_key specs are skipped
        assert_eq!(ok("spublish chan msg"), [] as [usize; 0]);
        // negative lastkey: the last argument is not a key
        assert_eq!(ok("blpop a b 0"), [1, 2]);
    }

    #[test]
    fn unbalanced_key_value_lists_are_malformed() {
        let (out, r) = keys("mset a 1 b");
        assert_eq!(out, [1, 3]); // what COMMAND GETKEYS lists
        assert_eq!(r, Err(KeysError::Malformed));
        let (out, r) = keys("xread streams a b 0");
        assert_eq!(out, [2]);
        assert_eq!(r, Err(KeysError::Malformed));
    }

    #[test]
    fn keynum_specs() {
        assert_eq!(ok("eval s 2 a b x"), [3, 4]);
        assert_eq!(ok("eval s 0"), [] as [usize; 0]);
        assert_eq!(ok("eval s 0 x y"), [] as [usize; 0]);
        assert_eq!(ok("fcall f 1 a x"), [3]);
        assert_eq!(ok("zunionstore d 2 a b weights 1 2"), [1, 3, 4]);
        assert_eq!(ok("zinter 2 a b"), [2, 3]);
        assert_eq!(ok("sintercard 2 a b limit 1"), [2, 3]);
        assert_eq!(ok("lmpop 2 a b left"), [2, 3]);
        assert_eq!(ok("blmpop 0 2 a b left"), [3, 4]);
        assert_eq!(ok("bzmpop 0 1 a min"), [3]);
    }

    #[test]
    fn bad_numkeys_is_malformed_never_a_panic() {
        for line in [
            "eval s 3 a b",
            "eval s -1 a",
            "eval s x a",
            "eval s 99999999999999999999999 a",
            "eval s 4294967297 a",
            "zunionstore d 0 a",
            "zunionstore d 5 a b",
            "zunionstore d -2147483648 a",
            "lmpop 0 left",
            "sintercard 1",
        ] {
            let (_, r) = keys(line);
            assert!(r.is_err(), "{line}");
        }
        // Redis's lenient fallback (atoi) still lists keys for "+2"; we list the same, but
        // refuse to vouch for them since EVAL itself rejects "+2".
        let (out, r) = keys("eval s +2 a b");
        assert_eq!(out, [3, 4]);
        assert_eq!(r, Err(KeysError::Malformed));
        let (out, r) = keys("zunionstore d 02 a b");
        assert_eq!(out, [3, 4, 1]); // genericGetKeys puts the destination last
        assert_eq!(r, Err(KeysError::Malformed));
    }

    #[test]
    fn keyword_specs() {
        assert_eq!(ok("xread count 2 streams a b 0 0"), [4, 5]);
        assert_eq!(ok("xread streams streams 0"), [2]);
        assert_eq!(ok("xreadgroup group g c count 1 streams a 0"), [7]);
        assert_eq!(ok("georadius k 0 0 1 km"), [1]);
        assert_eq!(ok("georadius k 0 0 1 km store d"), [1, 7]);
        assert_eq!(ok("georadius k 0 0 1 km storedist d2 store d"), [1, 9, 7]);
        assert_eq!(ok("georadiusbymember k m 1 km STORE d"), [1, 6]);
        // STREAMS missing: no key, and COMMAND GETKEYS refuses it.
        let (out, r) = keys("xread count 1 noack");
        assert_eq!((out.len(), r), (0, Err(KeysError::Malformed)));
    }

    #[test]
    fn the_one_key_shortcut_agrees_with_the_specs() {
        use super::super::table::COMMANDS;
        let specs: Vec<&CommandSpec> = COMMANDS
            .iter()
            .chain(COMMANDS.iter().flat_map(|c| c.subcommands))
            .collect();
        let mut checked = 0;
        for spec in specs {
            if spec.flags & F_MOVABLEKEYS != 0 || spec.first_key <= 0 || spec.last_key != spec.first_key {
                continue;
            }
            // Every spec, whatever its key specs say: the shortcut must either
            // not apply or agree.
            for argc in 1..10usize {
                let mut args: Vec<&[u8]> = vec![b"x"; argc];
                args[0] = spec.name.as_bytes();
                let (mut fast, mut general) = (Vec::new(), Vec::new());
                let a = key_indices(spec, &args, &mut fast);
                let b = key_indices_by_specs(spec, &args, &mut general);
                if a.is_ok() || b.is_ok() {
                    assert_eq!((a, &fast), (b, &general), "{} with {argc} arguments", spec.name);
                }
                checked += 1;
            }
        }
        assert!(checked > 1000, "{checked}");
    }

    #[test]
    fn special_procedures() {
        assert_eq!(ok("sort k"), [1]);
        assert_eq!(ok("sort k by w_* get # store d"), [1, 7]);
        assert_eq!(ok("sort k store a store b"), [1, 5]);
        assert_eq!(ok("sort k limit 0 1 store d"), [1, 6]);
        assert_eq!(ok("sort k get store store d"), [1, 5]);
        assert_eq!(ok("sort_ro k by x get y"), [1]);
        assert_eq!(ok("migrate h 1 k 0 5000"), [3]);
        assert_eq!(ok("migrate h 1  0 5000 copy keys a b"), [8, 9]);
        assert_eq!(ok("migrate h 1  0 5000 auth pw keys a"), [9]);
        assert_eq!(ok("migrate h 1  0 5000 auth keys keys a"), [9]);
        assert_eq!(ok("migrate h 1  0 5000 auth2 u keys keys a b"), [10, 11]);
        // KEYS with a non-empty key argument is a syntax error.
        let (out, r) = keys("migrate h 1 k 0 5000 keys a");
        assert_eq!((out.len(), r), (0, Err(KeysError::Malformed)));
        assert_eq!(ok("set k v get"), [1]);
        assert_eq!(ok("bitfield k get u8 0"), [1]);
        // KEYS as the last argument is not searched for (Redis's backwards keyword search
        // stops short of it), so the empty key at 3 is what Redis reports.
        assert_eq!(ok("migrate h 1  0 5000 keys"), [3]);
    }

    #[test]
    fn keywords_compare_like_strcasecmp() {
        // strcasecmp stops at NUL, as Redis's option parsing does.
        let args: Vec<&[u8]> = vec![b"xread", b"STREAMS\0junk", b"a", b"0"];
        let spec = lookup(b"xread").expect("xread");
        let mut out = Vec::new();
        assert_eq!(key_indices(spec, &args, &mut out), Ok(()));
        assert_eq!(out, [2]);
    }

    #[test]
    fn arity_errors_are_reported_and_safe() {
        for line in ["get", "get a b", "mset", "mset a", "eval", "eval s", "xgroup create"] {
            let (_, r) = keys(line);
            assert_eq!(r, Err(KeysError::Arity), "{line}");
        }
    }

    #[test]
    fn every_command_survives_hostile_argument_vectors() {
        use super::super::table::COMMANDS;
        let words: [&[u8]; 14] = [
            b"0",
            b"1",
            b"-1",
            b"2",
            b"-2147483648",
            b"99999999999",
            b"",
            b"keys",
            b"store",
            b"streams",
            b"STOREDIST",
            b"limit",
            b"get",
            b"x",
        ];
        let mut out = Vec::new();
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let specs: Vec<&CommandSpec> = COMMANDS
            .iter()
            .chain(COMMANDS.iter().flat_map(|c| c.subcommands))
            .collect();
        for spec in specs {
            for len in 0..12 {
                for _ in 0..20 {
                    let mut args: Vec<&[u8]> = vec![spec.name.as_bytes()];
                    for _ in 1..len {
                        args.push(words[(next() % words.len() as u64) as usize]);
                    }
                    let r = key_indices(spec, &args, &mut out);
                    assert!(out.iter().all(|&i| i >= 1 && i < args.len()));
                    if r.is_ok() {
                        assert!(spec.arity_ok(args.len()));
                    }
                }
            }
        }
    }
}
