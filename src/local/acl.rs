//! Logins (AUTH, HELLO AUTH) and the ACL command, over the users of the
//! current topology ([`crate::acl`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::acl::{self, User, limit, rules};
use crate::client::ClientState;
use crate::command::{self, ids, keys::key_indices};
use crate::error::{ErrorKind, ReplyError};
use crate::protocol::Encoder;
use crate::state::Shared;
use crate::topology::Topology;

/// Checks credentials, counting failures and refusing a source IP over the
/// limit ([`limit`]). The password is never logged.
pub(super) fn login(
    user: Option<&[u8]>,
    pass: &[u8],
    st: &ClientState,
    shared: &Shared,
    topo: &Topology,
) -> Result<Arc<User>, ReplyError> {
    let ip = limit::ip_of(&st.addr);
    let now = Instant::now();
    if shared.logins.blocked(ip, now) {
        shared.stats.auth_failures.fetch_add(1, Ordering::Relaxed);
        return Err(acl::wrongpass());
    }
    let result = topo.acl.login(user, pass);
    if let Err(e) = &result {
        if e.kind() == ErrorKind::WrongPass {
            shared.logins.failed(ip, now);
            shared.stats.auth_failures.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                addr = %st.addr,
                user = %command::printable(user.unwrap_or(b"default"), 64),
                "failed login"
            );
        }
    }
    result
}

/// A seat for the connection as `user`, which it has just logged in as
/// (see [`crate::limits::seats`]): the seat it held as another user is
/// given back; past the user's `max_clients` the login is refused and the
/// connection stays who it was.
pub(super) fn seat(st: &mut ClientState, shared: &Shared, user: Arc<User>) -> Result<Arc<User>, ReplyError> {
    match shared.limits.take_seat(&user.name, user.max_clients, st.seat.take()) {
        Ok(seat) => {
            st.seat = Some(seat);
            Ok(user)
        }
        Err(held) => {
            st.seat = held;
            shared.limits.user_clients_refused.fetch_add(1, Ordering::Relaxed);
            tracing::info!(addr = %st.addr, user = %user.name, "login refused: the user's max_clients reached");
            Err(ReplyError::err(format!(
                "max number of clients reached for user '{}'",
                user.name
            )))
        }
    }
}

pub(super) fn command(args: &[&[u8]], st: &ClientState, topo: &Topology, enc: &mut Encoder<'_>) {
    let sub = args[1].to_ascii_lowercase();
    match sub.as_slice() {
        b"whoami" => enc.bulk(st.user.name.as_bytes()),
        b"users" => {
            let users = topo.acl.users();
            enc.array(users.len());
            for u in users {
                enc.bulk(u.name.as_bytes());
            }
        }
        b"list" => {
            let users = topo.acl.users();
            enc.array(users.len());
            for u in users {
                enc.bulk(u.acl_line().as_bytes());
            }
        }
        b"cat" => cat(args, enc),
        b"dryrun" => dryrun(args, topo, enc),
        _ => enc.error("ERR unknown ACL subcommand"),
    }
}

fn cat(args: &[&[u8]], enc: &mut Encoder<'_>) {
    match args.get(2) {
        None => {
            enc.array(rules::CATEGORIES.len());
            for c in rules::CATEGORIES {
                enc.bulk(c.as_bytes());
            }
        }
        Some(c) => {
            let lower = String::from_utf8_lossy(c).to_ascii_lowercase();
            let Some(cat) = rules::CATEGORIES.iter().find(|k| **k == lower) else {
                return enc.error(&format!("ERR Unknown category '{}'", command::printable(c, 64)));
            };
            let tag = format!("@{cat}");
            let mut names = Vec::new();
            ids::each(|_, spec, _| {
                if spec.acl_categories.contains(&tag.as_str()) {
                    names.push(spec.name);
                }
            });
            enc.array(names.len());
            for n in names {
                enc.bulk(n.as_bytes());
            }
        }
    }
}

/// ACL DRYRUN user command [arg ...]: OK, or why not (as Redis 7.0.15).
fn dryrun(args: &[&[u8]], topo: &Topology, enc: &mut Encoder<'_>) {
    let Some(user) = args.get(2).and_then(|u| topo.acl.user(u)) else {
        let name = args
            .get(2)
            .map_or(String::new(), |u| command::printable(u, 64).to_string());
        return enc.error(&format!("ERR User '{name}' not found"));
    };
    let cmd = &args[3..];
    let lookup = match command::lookup(cmd) {
        Ok(l) => l,
        Err(_) if cmd.first().is_some_and(|c| command::spec::lookup(c).is_some()) => {
            let name = command::printable(cmd[0], 64).to_ascii_lowercase();
            return enc.error(&format!("ERR wrong number of arguments for '{name}' command"));
        }
        Err(_) => {
            let name = cmd
                .first()
                .map_or(String::new(), |c| command::printable(c, 64).to_string());
            return enc.error(&format!("ERR Command '{name}' not found"));
        }
    };
    let spec = lookup.spec;
    match acl::check(&user.perms, spec, lookup.id(), cmd, &mut Vec::new()) {
        Ok(()) => enc.ok(),
        Err(_) if !user.perms.allows(lookup.id()) => {
            enc.bulk(format!("This user has no permissions to run the '{}' command", spec.name).as_bytes())
        }
        Err(_) => {
            let mut keys = Vec::new();
            let _ = key_indices(spec, cmd, &mut keys);
            let key = keys
                .iter()
                .filter_map(|&i| cmd.get(i))
                .find(|k| !user.perms.allows_key(k, acl::key_need(spec)))
                .map_or(String::new(), |k| String::from_utf8_lossy(k).into_owned());
            enc.bulk(format!("This user has no permissions to access the '{key}' key").as_bytes());
        }
    }
}
