//! Redis ACL rules (the subset shardis supports) compiled into a user's
//! permissions: a bitset over command ids ([`crate::command::ids`]) and the
//! key patterns.
//!
//! Rules apply left to right as in Redis's `ACL SETUSER`: `+@cat` / `-@cat`,
//! `+cmd` / `-cmd` (a container command with all its subcommands),
//! `+cmd|sub` / `-cmd|sub`, `allcommands` / `nocommands`; for keys `~pattern`,
//! `%R~pattern`, `%W~pattern`, `%RW~pattern`, `allkeys` (`~*`), `resetkeys`.
//! Categories are those of the command table (`@read`, `@admin` ...); a
//! category matching a container command covers its subcommands too, as in
//! Redis.

use crate::command::ids;
use crate::command::spec::CommandSpec;

/// The categories Redis 7.0 defines, in `ACL CAT` order.
pub const CATEGORIES: &[&str] = &[
    "keyspace",
    "read",
    "write",
    "set",
    "sortedset",
    "list",
    "hash",
    "string",
    "bitmap",
    "hyperloglog",
    "geo",
    "stream",
    "pubsub",
    "admin",
    "fast",
    "slow",
    "blocking",
    "dangerous",
    "connection",
    "transaction",
    "scripting",
];

/// Key permission bits of a pattern.
pub const KEY_READ: u8 = 1;
pub const KEY_WRITE: u8 = 2;

/// One key pattern and what it allows (read, write or both).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPattern {
    pub perm: u8,
    pub pattern: Vec<u8>,
}

/// What a user may run, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Perms {
    /// One bit per command id.
    bits: Vec<u64>,
    /// Every bit set (the common `+@all`): the check is skipped.
    pub all_commands: bool,
    /// `allkeys` (`~*`): keys are not checked.
    pub all_keys: bool,
    pub keys: Vec<KeyPattern>,
    /// `allchannels` (`&*`): pub/sub channels are not checked.
    pub all_channels: bool,
    /// Channel patterns (`&pattern`).
    pub channels: Vec<Vec<u8>>,
    /// The command rules as given, lowercased, from the last `+@all` /
    /// `-@all` on (ACL LIST).
    text: Vec<String>,
}

impl Default for Perms {
    /// No command, no key (Redis's new user).
    fn default() -> Perms {
        Perms {
            bits: vec![0; ids::count().div_ceil(64)],
            all_commands: false,
            all_keys: false,
            keys: Vec::new(),
            all_channels: false,
            channels: Vec::new(),
            text: Vec::new(),
        }
    }
}

fn unknown(rule: &str) -> String {
    format!("Error in ACL rule '{rule}': Unknown command or category name in ACL")
}

impl Perms {
    /// Everything: `+@all ~* &*`.
    pub fn all() -> Perms {
        let mut p = Perms::default();
        for r in ["+@all", "~*", "&*"] {
            let _ = p.apply(r);
        }
        p
    }

    /// Whether command `id` is allowed: a bit test.
    #[inline]
    pub fn allows(&self, id: usize) -> bool {
        self.all_commands || self.bits.get(id / 64).is_some_and(|w| w & (1 << (id % 64)) != 0)
    }

    fn set(&mut self, id: usize, on: bool) {
        if let Some(w) = self.bits.get_mut(id / 64) {
            if on {
                *w |= 1 << (id % 64);
            } else {
                *w &= !(1 << (id % 64));
            }
        }
    }

    /// A command and, for a container, all its subcommands.
    fn set_command(&mut self, id: usize, spec: &CommandSpec, on: bool) {
        self.set(id, on);
        for j in 0..spec.subcommands.len() {
            self.set(id + 1 + j, on);
        }
    }

    fn set_category(&mut self, cat: &str, on: bool) {
        let tag = format!("@{cat}");
        let all = cat == "all";
        let mut changes = Vec::new();
        ids::each(|id, spec, _| {
            if all || spec.acl_categories.contains(&tag.as_str()) {
                changes.push((id, spec));
            }
        });
        for (id, spec) in changes {
            self.set_command(id, spec, on);
        }
    }

    /// Applies one rule; `Err` says why it is not understood.
    pub fn apply(&mut self, rule: &str) -> Result<(), String> {
        let lower = rule.to_ascii_lowercase();
        match lower.as_str() {
            "allcommands" => return self.apply("+@all"),
            "nocommands" => return self.apply("-@all"),
            "allkeys" => return self.apply("~*"),
            "allchannels" => return self.apply("&*"),
            "resetchannels" => {
                self.all_channels = false;
                self.channels.clear();
                return Ok(());
            }
            "resetkeys" => {
                self.all_keys = false;
                self.keys.clear();
                return Ok(());
            }
            _ => {}
        }
        if let Some(pattern) = rule.strip_prefix('&') {
            self.all_channels |= pattern == "*";
            self.channels.push(pattern.as_bytes().to_vec());
            return Ok(());
        }
        if let Some((perm, pattern)) = key_rule(rule) {
            if perm == 0 {
                return Err(format!("Error in ACL rule '{rule}': Syntax error"));
            }
            if pattern == "*" && perm == KEY_READ | KEY_WRITE {
                self.all_keys = true;
            }
            self.keys.push(KeyPattern {
                perm,
                pattern: pattern.as_bytes().to_vec(),
            });
            return Ok(());
        }
        let (on, what) = match lower.split_at_checked(1) {
            Some(("+", w)) => (true, w),
            Some(("-", w)) => (false, w),
            _ => return Err(format!("Error in ACL rule '{rule}': Syntax error")),
        };
        if let Some(cat) = what.strip_prefix('@') {
            if cat != "all" && !CATEGORIES.contains(&cat) {
                return Err(unknown(rule));
            }
            self.set_category(cat, on);
            if cat == "all" {
                self.all_commands = on;
                self.text.clear();
            } else {
                self.all_commands = on && self.all_commands;
            }
        } else {
            let (id, spec) = ids::by_name(what).ok_or_else(|| unknown(rule))?;
            self.set_command(id, spec, on);
            if !on {
                self.all_commands = false;
            }
        }
        self.text.push(lower);
        Ok(())
    }

    /// Whether `key` may be accessed as `need` ([`KEY_READ`] | [`KEY_WRITE`]).
    pub fn allows_key(&self, key: &[u8], need: u8) -> bool {
        self.all_keys
            || self
                .keys
                .iter()
                .any(|k| k.perm & need == need && crate::lock::glob::glob_match(&k.pattern, key))
    }

    /// Whether `channel` may be used; `pattern`: it is a PSUBSCRIBE
    /// pattern, allowed only when the user has that very pattern (Redis).
    pub fn allows_channel(&self, channel: &[u8], pattern: bool) -> bool {
        self.all_channels
            || self.channels.iter().any(|p| {
                if pattern {
                    p.as_slice() == channel
                } else {
                    crate::lock::glob::glob_match(p, channel)
                }
            })
    }

    /// The channel rules in Redis's text (ACL LIST).
    pub fn channel_text(&self) -> String {
        if self.all_channels {
            return "&*".into();
        }
        if self.channels.is_empty() {
            return "resetchannels".into();
        }
        let v: Vec<String> = self
            .channels
            .iter()
            .map(|c| format!("&{}", String::from_utf8_lossy(c)))
            .collect();
        v.join(" ")
    }

    /// The command rules in Redis's text (ACL LIST): `+@all ...` or
    /// `-@all ...`, as given after the last `+@all` / `-@all`.
    pub fn command_text(&self) -> String {
        match self.text.first().map(String::as_str) {
            Some("+@all" | "-@all") => self.text.join(" "),
            None => "-@all".into(),
            Some(_) => format!("-@all {}", self.text.join(" ")),
        }
    }

    /// The key rules in Redis's text (ACL LIST).
    pub fn key_text(&self) -> String {
        if self.all_keys {
            return "~*".into();
        }
        let v: Vec<String> = self
            .keys
            .iter()
            .map(|k| {
                let p = String::from_utf8_lossy(&k.pattern);
                match k.perm {
                    KEY_READ => format!("%R~{p}"),
                    KEY_WRITE => format!("%W~{p}"),
                    _ => format!("~{p}"),
                }
            })
            .collect();
        v.join(" ")
    }
}

/// `~p` (read and write), `%R~p`, `%W~p`, `%RW~p`: the permission and the
/// pattern (permission 0: a malformed `%` rule).
fn key_rule(rule: &str) -> Option<(u8, &str)> {
    if let Some(p) = rule.strip_prefix('~') {
        return Some((KEY_READ | KEY_WRITE, p));
    }
    let rest = rule.strip_prefix('%')?;
    let (flags, pattern) = rest.split_once('~').unwrap_or((rest, ""));
    let mut perm = 0;
    for c in flags.chars() {
        match c.to_ascii_uppercase() {
            'R' => perm |= KEY_READ,
            'W' => perm |= KEY_WRITE,
            _ => return Some((0, pattern)),
        }
    }
    if !rest.contains('~') {
        perm = 0;
    }
    Some((perm, pattern))
}

/// Compiles whitespace-separated command rules, key and channel patterns.
pub fn compile(commands: &str, keys: &[String], channels: &[String]) -> Result<Perms, String> {
    let mut p = Perms::default();
    for c in channels {
        if !(c.starts_with('&') || matches!(c.as_str(), "allchannels" | "resetchannels")) {
            return Err(format!(
                "'{c}' is not a channel rule (&pattern, allchannels, resetchannels)"
            ));
        }
        p.apply(c)?;
    }
    for r in commands.split_whitespace() {
        if r.starts_with('&') || matches!(r, "allchannels" | "resetchannels") {
            return Err(format!("'{r}' is a channel rule: put it in `channels`"));
        }
        if r.starts_with('~') || r.starts_with('%') || matches!(r, "allkeys" | "resetkeys") {
            return Err(format!("'{r}' is a key rule: put it in `keys`"));
        }
        p.apply(r)?;
    }
    for k in keys {
        if !(k.starts_with('~') || k.starts_with('%') || matches!(k.as_str(), "allkeys" | "resetkeys")) {
            return Err(format!(
                "'{k}' is not a key rule (~pattern, %R~pattern, %W~pattern, allkeys)"
            ));
        }
        p.apply(k)?;
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(p: &Perms, name: &str) -> bool {
        p.allows(ids::by_name(name).unwrap().0)
    }

    #[test]
    fn categories_and_commands_apply_in_order() {
        let p = compile("+@read -@dangerous +ping", &[], &[]).unwrap();
        assert!(allowed(&p, "get"));
        assert!(allowed(&p, "ping"));
        assert!(!allowed(&p, "set"));
        assert!(!allowed(&p, "keys"), "keys is @dangerous");
        assert!(!allowed(&p, "config|set"));

        let p = compile("+@all -@admin", &[], &[]).unwrap();
        assert!(!p.all_commands);
        assert!(allowed(&p, "set") && allowed(&p, "flushall"));
        assert!(!allowed(&p, "config|set") && !allowed(&p, "monitor") && !allowed(&p, "client|kill"));
        assert!(!allowed(&p, "shardis.reload"));
        assert!(allowed(&p, "config|get") || !allowed(&p, "config|get"));

        let p = compile("allcommands", &[], &[]).unwrap();
        assert!(p.all_commands && allowed(&p, "config|set"));

        let p = compile("nocommands +config -config|set +client|list", &[], &[]).unwrap();
        assert!(allowed(&p, "config|get") && !allowed(&p, "config|set"));
        assert!(allowed(&p, "client|list") && !allowed(&p, "client|kill"));
        assert!(!allowed(&p, "get"));
    }

    #[test]
    fn bad_rules_are_refused_with_the_reason() {
        assert!(
            compile("+@bogus", &[], &[])
                .unwrap_err()
                .contains("Unknown command or category")
        );
        assert!(
            compile("+nosuch", &[], &[])
                .unwrap_err()
                .contains("Unknown command or category")
        );
        assert!(compile("get", &[], &[]).unwrap_err().contains("Syntax error"));
        assert!(compile("~a:*", &[], &[]).unwrap_err().contains("key rule"));
        assert!(compile("+get", &["a:*".into()], &[]).is_err());
        assert!(compile("+get", &["%X~a".into()], &[]).is_err());
    }

    #[test]
    fn key_patterns() {
        let p = compile("+@all", &["~app:*".into(), "%R~ro:*".into(), "%W~wo:*".into()], &[]).unwrap();
        assert!(!p.all_keys);
        assert!(p.allows_key(b"app:1", KEY_READ | KEY_WRITE));
        assert!(p.allows_key(b"ro:1", KEY_READ));
        assert!(!p.allows_key(b"ro:1", KEY_WRITE));
        assert!(p.allows_key(b"wo:1", KEY_WRITE));
        assert!(!p.allows_key(b"wo:1", KEY_READ));
        assert!(!p.allows_key(b"other", KEY_READ));
        let p = compile("+@all", &["allkeys".into()], &[]).unwrap();
        assert!(p.all_keys && p.allows_key(b"x", KEY_WRITE));
    }

    #[test]
    fn channel_patterns() {
        let p = compile("+@all", &["allkeys".into()], &["&news:*".into()]).unwrap();
        assert!(!p.all_channels);
        assert!(p.allows_channel(b"news:1", false));
        assert!(!p.allows_channel(b"sport", false));
        assert!(p.allows_channel(b"news:*", true), "the same pattern");
        assert!(!p.allows_channel(b"news:1*", true), "a pattern is compared literally");
        assert_eq!(p.channel_text(), "&news:*");
        let p = compile("+@all", &[], &["resetchannels".into()]).unwrap();
        assert_eq!(p.channel_text(), "resetchannels");
        assert!(compile("+@all", &[], &["news".into()]).is_err());
        assert!(compile("+@all &x", &[], &[]).is_err());
        assert!(compile("", &[], &["allchannels".into()]).unwrap().all_channels);
    }

    #[test]
    fn rule_text() {
        let p = compile("+@read +@connection", &["~ro:*".into()], &[]).unwrap();
        assert_eq!(p.command_text(), "-@all +@read +@connection");
        assert_eq!(p.key_text(), "~ro:*");
        let p = compile("+@all -@admin", &["allkeys".into()], &[]).unwrap();
        assert_eq!(p.command_text(), "+@all -@admin");
        assert_eq!(p.key_text(), "~*");
        assert_eq!(compile("allcommands", &[], &[]).unwrap().command_text(), "+@all");
    }
}
