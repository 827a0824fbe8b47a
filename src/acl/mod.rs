//! Users and their permissions (`[[users]]` in proxy.toml), in Redis's ACL
//! terms: who may log in (AUTH, HELLO AUTH), which commands and keys each
//! user may use, and the answers to ACL WHOAMI / USERS / CAT / LIST / DRYRUN.
//!
//! - [`rules`]: the ACL rule parser and the compiled permissions (a bitset
//!   over command ids, key patterns).
//! - [`limit`]: the rate limit on failed logins per source IP.
//!
//! The users are compiled once per configuration (a reload compiles them
//! again) into an [`Acl`] held by the topology; a session holds the
//! `Arc<User>` it logged in as. Checking a command is one bit test; keys are
//! looked at only for a user with key patterns. The legacy `password` is the
//! `default` user's; `admin_password` (SHARDIS.ADMIN) still unlocks
//! everything. Passwords are kept as SHA-256 digests, compared in constant
//! time and never logged.

pub mod limit;
pub mod rules;

use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::command::keys::key_indices;
use crate::command::spec::{CommandSpec, F_NO_AUTH, F_PUBSUB, KS_ACCESS, KS_DELETE, KS_INSERT, KS_UPDATE};
use crate::error::{ErrorKind, ReplyError};
pub use rules::Perms;

/// One `[[users]]` entry of proxy.toml.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    /// The password in clear text; or give `password_sha256`.
    #[serde(default)]
    pub password: Option<String>,
    /// The SHA-256 of the password, in hex (as Redis ACL files hold `#<hex>`).
    #[serde(default)]
    pub password_sha256: Option<String>,
    /// `false`: the user cannot log in.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// A preset: `read-only`, `read-write` or `admin`; `commands` and `keys`
    /// apply after it.
    #[serde(default)]
    pub role: Option<String>,
    /// Command rules in Redis ACL syntax: `+@read -@dangerous +ping`.
    #[serde(default)]
    pub commands: Option<String>,
    /// Key patterns: `~prefix:*`, `%R~ro:*`, `%W~wo:*`, `allkeys`.
    #[serde(default)]
    pub keys: Option<Vec<String>>,
    /// Pub/sub channel patterns: `&news:*`, `allchannels` (the default),
    /// `resetchannels` (none).
    #[serde(default)]
    pub channels: Option<Vec<String>>,
    /// Most connections logged in as this user at once (AUTH, HELLO
    /// AUTH); a login past it is refused with `-ERR max number of clients
    /// reached for user '<name>'`. None (the default): no limit. See
    /// [`crate::limits::seats`].
    #[serde(default)]
    pub max_clients: Option<usize>,
}

fn yes() -> bool {
    true
}

/// A role's rules: (commands, keys).
fn role(name: &str) -> Option<(&'static str, &'static str)> {
    Some(match name {
        "read-only" => (
            "+@read +@connection -@admin -@dangerous -@write +ping +info +command",
            "allkeys",
        ),
        "read-write" => ("+@all -@admin -@dangerous +info", "allkeys"),
        "admin" => ("+@all", "allkeys"),
        _ => return None,
    })
}

/// A user, compiled.
#[derive(Debug)]
pub struct User {
    pub name: String,
    pub enabled: bool,
    /// Any password is accepted (the `default` user without `password`).
    nopass: bool,
    digest: Option<[u8; 32]>,
    pub perms: Perms,
    /// The legacy `default` user: with an `admin_password` (or with users
    /// configured) its admin commands need SHARDIS.ADMIN, as before users.
    pub gated: bool,
    /// Most connections logged in as this user (`None`: no limit).
    pub max_clients: Option<usize>,
}

fn sha256(pass: &[u8]) -> [u8; 32] {
    Sha256::digest(pass).into()
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl User {
    /// Whether `pass` is this user's password (constant time over the
    /// digests) and the user may log in.
    pub fn accepts(&self, pass: &[u8]) -> bool {
        if !self.enabled {
            return false;
        }
        if self.nopass {
            return true;
        }
        let Some(want) = &self.digest else {
            return false;
        };
        ct_eq(want, &sha256(pass))
    }

    /// Whether the user is the only one whose permissions are unrestricted
    /// commands and keys (the check can be skipped).
    pub fn unrestricted(&self) -> bool {
        self.perms.all_commands && self.perms.all_keys && self.perms.all_channels
    }

    /// The user as `ACL LIST` shows it.
    pub fn acl_line(&self) -> String {
        let mut s = format!("user {} {}", self.name, if self.enabled { "on" } else { "off" });
        if self.nopass {
            s.push_str(" nopass");
        } else if let Some(d) = &self.digest {
            s.push_str(" #");
            s.push_str(&hex(d));
        }
        let keys = self.perms.key_text();
        if keys.is_empty() {
            s.push_str(" resetkeys");
        } else {
            s.push(' ');
            s.push_str(&keys);
        }
        s.push(' ');
        s.push_str(&self.perms.channel_text());
        s.push(' ');
        s.push_str(&self.perms.command_text());
        s
    }

    fn compile(c: &UserConfig) -> Result<User, String> {
        if c.name.is_empty() || c.name.bytes().any(|b| !(b'!'..=b'~').contains(&b)) {
            return Err("must be a non-empty name without spaces".into());
        }
        let digest = match (&c.password, &c.password_sha256) {
            (Some(_), Some(_)) => return Err("give `password` or `password_sha256`, not both".into()),
            (Some(p), None) => Some(sha256(p.as_bytes())),
            (None, Some(h)) => Some(
                parse_hex(h.trim_start_matches('#'))
                    .ok_or("password_sha256 must be 64 hex digits (the SHA-256 of the password)")?,
            ),
            (None, None) => None,
        };
        let mut commands = String::new();
        let mut keys: Vec<String> = Vec::new();
        if let Some(r) = &c.role {
            let (cmds, k) = role(r).ok_or_else(|| format!("unknown role '{r}' (read-only, read-write, admin)"))?;
            commands.push_str(cmds);
            keys.push(k.into());
        }
        if let Some(cmds) = &c.commands {
            commands.push(' ');
            commands.push_str(cmds);
        }
        if let Some(k) = &c.keys {
            if c.role.is_some() {
                keys.clear();
            }
            keys.extend(k.iter().cloned());
        }
        let channels = c.channels.clone().unwrap_or_else(|| vec!["allchannels".into()]);
        let perms = rules::compile(&commands, &keys, &channels)?;
        Ok(User {
            name: c.name.clone(),
            enabled: c.enabled,
            // A user without a password can only be `default`: nopass.
            nopass: digest.is_none(),
            digest,
            perms,
            gated: false,
            max_clients: c.max_clients,
        })
    }
}

/// The users of one configuration.
#[derive(Debug)]
pub struct Acl {
    /// Sorted by name; `default` is among them.
    users: Vec<Arc<User>>,
    default: Arc<User>,
}

impl Default for Acl {
    /// The proxy without users or passwords: `default`, nopass, everything.
    fn default() -> Acl {
        Acl::build(&[], None, false).unwrap_or_else(|_| unreachable_acl())
    }
}

/// An Acl nobody can use (only if the built-in default failed to compile).
fn unreachable_acl() -> Acl {
    let default = Arc::new(User {
        name: "default".into(),
        enabled: false,
        nopass: false,
        digest: None,
        perms: Perms::default(),
        gated: true,
        max_clients: None,
    });
    Acl {
        users: vec![default.clone()],
        default,
    }
}

impl Acl {
    /// Compiles `users`; `password` is the legacy default user's password,
    /// `admin_password` whether one is configured. `Err` names the user
    /// entry and the reason.
    pub fn build(users: &[UserConfig], password: Option<&str>, admin_password: bool) -> Result<Acl, (String, String)> {
        let mut out: Vec<Arc<User>> = Vec::new();
        for (i, c) in users.iter().enumerate() {
            let key = format!("users[{i}]");
            let u = User::compile(c).map_err(|e| (key.clone(), e))?;
            if u.nopass && u.name != "default" {
                return Err((key, "needs a `password` or `password_sha256`".into()));
            }
            if out.iter().any(|o| o.name == u.name) {
                return Err((key, format!("duplicate user name '{}'", u.name)));
            }
            if u.name == "default" && password.is_some() {
                return Err((
                    key,
                    "the `default` user is configured here and by `password`: keep one".into(),
                ));
            }
            out.push(Arc::new(u));
        }
        let default = match out.iter().find(|u| u.name == "default") {
            Some(d) => d.clone(),
            None => {
                let d = Arc::new(User {
                    name: "default".into(),
                    // With users configured and no `password`, nobody logs
                    // in as `default` (else users would be pointless).
                    enabled: users.is_empty() || password.is_some(),
                    nopass: password.is_none(),
                    digest: password.map(|p| sha256(p.as_bytes())),
                    perms: Perms::all(),
                    gated: admin_password || !users.is_empty(),
                    max_clients: None,
                });
                out.push(d.clone());
                d
            }
        };
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Acl { users: out, default })
    }

    /// The user a new connection starts as.
    pub fn default_user(&self) -> &Arc<User> {
        &self.default
    }

    /// Whether a new connection must log in first (the default user has a
    /// password or is disabled).
    pub fn needs_login(&self) -> bool {
        !(self.default.nopass && self.default.enabled)
    }

    pub fn users(&self) -> &[Arc<User>] {
        &self.users
    }

    pub fn user(&self, name: &[u8]) -> Option<&Arc<User>> {
        self.users.iter().find(|u| u.name.as_bytes() == name)
    }

    /// AUTH / HELLO AUTH: the user logged in, or WRONGPASS (Redis's text).
    /// `user` `None` is `AUTH <password>`: the default user.
    pub fn login(&self, user: Option<&[u8]>, pass: &[u8]) -> Result<Arc<User>, ReplyError> {
        let u = match user {
            None if self.default.nopass && self.default.enabled => {
                return Err(ReplyError::err(
                    "AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
                ));
            }
            None => Some(&self.default),
            Some(name) => self.user(name),
        };
        match u {
            Some(u) if u.accepts(pass) => Ok(u.clone()),
            _ => Err(wrongpass()),
        }
    }
}

/// Whether two secrets are equal, in time independent of where they differ
/// (their SHA-256 digests are compared).
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    ct_eq(&sha256(a), &sha256(b))
}

fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Redis's answer to bad credentials.
pub fn wrongpass() -> ReplyError {
    ReplyError::new(
        ErrorKind::WrongPass,
        "invalid username-password pair or user is disabled.",
    )
}

/// Redis 7.0's refusal of a command.
pub fn no_command_perm(name: &str) -> ReplyError {
    ReplyError::new(
        ErrorKind::NoPerm,
        format!("this user has no permissions to run the '{name}' command"),
    )
}

/// Redis 7.0's refusal of a key.
pub fn no_key_perm() -> ReplyError {
    ReplyError::new(
        ErrorKind::NoPerm,
        "this user has no permissions to access one of the keys used as arguments",
    )
}

/// The key permission a command needs of its keys, from its key specs' flags
/// (as Redis: ACCESS reads, INSERT/DELETE/UPDATE write). With several key
/// specs, their union applies to every key: stricter than Redis for
/// commands such as COPY, never looser.
pub fn key_need(spec: &CommandSpec) -> u8 {
    let flags = spec.key_specs.iter().fold(0, |acc, ks| acc | ks.flags);
    let mut need = 0;
    if flags & KS_ACCESS != 0 {
        need |= rules::KEY_READ;
    }
    if flags & (KS_INSERT | KS_DELETE | KS_UPDATE) != 0 {
        need |= rules::KEY_WRITE;
    }
    need
}

/// Whether `perms` allow the request (`spec`, command `id`, `args`);
/// `scratch` is reused for key indices. The refusal is Redis's NOPERM.
pub fn check(
    perms: &Perms,
    spec: &CommandSpec,
    id: usize,
    args: &[&[u8]],
    scratch: &mut Vec<usize>,
) -> Result<(), ReplyError> {
    // AUTH, HELLO (no_auth) and SHARDIS.ADMIN are every user's.
    if !perms.allows(id) && spec.flags & F_NO_AUTH == 0 && spec.name != "shardis.admin" {
        return Err(no_command_perm(spec.name));
    }
    if !perms.all_keys && !spec.key_specs.is_empty() {
        let _ = key_indices(spec, args, scratch);
        let need = key_need(spec);
        if scratch
            .iter()
            .any(|&i| args.get(i).is_none_or(|k| !perms.allows_key(k, need)))
        {
            return Err(no_key_perm());
        }
    }
    if !perms.all_channels && spec.flags & F_PUBSUB != 0 {
        let channels = match spec.name {
            "publish" | "spublish" => args.get(1..2),
            "subscribe" | "ssubscribe" | "psubscribe" => args.get(1..),
            _ => None,
        };
        let pattern = spec.name == "psubscribe";
        if channels.is_some_and(|cs| cs.iter().any(|c| !perms.allows_channel(c, pattern))) {
            return Err(ReplyError::new(
                ErrorKind::NoPerm,
                "this user has no permissions to access one of the channels used as arguments",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
