//! Commands the proxy answers itself: connection commands (PING, HELLO, AUTH,
//! SELECT, CLIENT ..., RESET, QUIT), introspection (COMMAND, INFO), TIME,
//! and the operator's commands on the proxy itself (MONITOR, SLOWLOG,
//! LATENCY).
//!
//! - [`clients`]: CLIENT LIST / INFO / KILL / PAUSE / REPLY ... across the
//!   proxy's clients.
//! - [`acl`]: AUTH and HELLO AUTH logins (with the failed-login limit), and
//!   ACL WHOAMI / USERS / CAT / LIST / DRYRUN.
//! - [`latency`]: LATENCY, answered for a proxy that records no events.

mod acl;
mod clients;
mod latency;

use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::client::ClientState;
use crate::command::table::REDIS_VERSION;
use crate::command::{self, Local, info, keys, spec, table};
use crate::error::{ErrorKind, ReplyError};
use crate::info::Info;
use crate::lock::members::resting_members;
use crate::protocol::{Encoder, Protocol};
use crate::state::Shared;
use crate::topology::Topology;

/// What the session does after a local command.
pub enum Outcome {
    /// The reply is in the encoder.
    Reply,
    /// Send the reply, then close the connection.
    Close,
    /// INFO: send `INFO <sections>` to every shard and merge the answers
    /// into this reply.
    Info(Box<Info>, Vec<&'static str>),
    /// MONITOR: send the reply (OK), then the connection is a monitor.
    Monitor,
}

pub fn run(
    cmd: Local,
    args: &[&[u8]],
    st: &mut ClientState,
    shared: &Shared,
    topo: &Topology,
    enc: &mut Encoder<'_>,
) -> Outcome {
    match cmd {
        Local::Ping => match args.get(1) {
            Some(msg) => enc.bulk(msg),
            None => enc.simple("PONG"),
        },
        Local::Echo => enc.bulk(args[1]),
        Local::Unsubscribe => {
            // Not subscribed (a subscriber's go to its pub/sub connection):
            // as Redis, one confirmation per channel, or one with no channel.
            let kind = if args[0].eq_ignore_ascii_case(b"punsubscribe") {
                &b"punsubscribe"[..]
            } else {
                b"unsubscribe"
            };
            if args.len() == 1 {
                enc.push(3);
                enc.bulk(kind);
                enc.null();
                enc.integer(0);
            }
            for channel in &args[1..] {
                enc.push(3);
                enc.bulk(kind);
                enc.bulk(channel);
                enc.integer(0);
            }
        }
        Local::Quit => {
            enc.ok();
            return Outcome::Close;
        }
        Local::Select => {
            if args[1] == b"0" {
                enc.ok();
            } else {
                enc.error("ERR DB index is out of range (shardis serves database 0 only)");
            }
        }
        Local::Time => {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
            enc.array(2);
            enc.bulk(itoa::Buffer::new().format(now.as_secs()).as_bytes());
            enc.bulk(itoa::Buffer::new().format(now.subsec_micros()).as_bytes());
        }
        Local::Reset => {
            st.proto = Protocol::Resp2;
            st.name = None;
            st.user = topo.acl.default_user().clone();
            st.seat = None;
            st.authenticated = !topo.acl.needs_login();
            st.admin = false;
            st.reply = crate::client::ReplyMode::On;
            st.entry.set_flag(crate::registry::flag::NO_EVICT, false);
            enc.proto = Protocol::Resp2;
            enc.simple("RESET");
        }
        Local::Auth => {
            let (user, pass) = match args.len() {
                2 => (None, args[1]),
                3 => (Some(args[1]), args[2]),
                _ => {
                    enc.error("ERR syntax error");
                    return Outcome::Reply;
                }
            };
            match acl::login(user, pass, st, shared, topo).and_then(|u| acl::seat(st, shared, u)) {
                Ok(u) => {
                    st.user = u;
                    st.authenticated = true;
                    enc.ok();
                }
                Err(e) => e.encode(enc),
            }
        }
        Local::Acl => acl::command(args, st, topo, enc),
        Local::Hello => hello(args, st, shared, topo, enc),
        Local::Client => return client(args, st, shared, enc),
        Local::Monitor => {
            enc.ok();
            return Outcome::Monitor;
        }
        Local::Slowlog => crate::slowlog::command(&shared.slowlog, args, enc),
        Local::Latency => latency::command(args, enc),
        Local::Command => command_cmd(args, enc),
        Local::Info => {
            let info = info_request(args, st, shared, topo);
            match info.shard_request() {
                Some(sections) => return Outcome::Info(Box::new(info), sections),
                None => enc.verbatim(info.text_without_shards().as_bytes()),
            }
        }
    }
    Outcome::Reply
}

fn hello(args: &[&[u8]], st: &mut ClientState, shared: &Shared, topo: &Topology, enc: &mut Encoder<'_>) {
    let mut proto = st.proto;
    let mut i = 1;
    if let Some(v) = args.get(1) {
        match *v {
            b"2" => proto = Protocol::Resp2,
            b"3" => proto = Protocol::Resp3,
            _ => {
                let valid = std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                    .is_some();
                let e = if valid {
                    ReplyError::new(ErrorKind::NoProto, "unsupported protocol version")
                } else {
                    ReplyError::err("Protocol version is not an integer or out of range")
                };
                return e.encode(enc);
            }
        }
        i = 2;
    }
    let mut name = None;
    let mut authed = st.authenticated;
    let mut user = None;
    while i < args.len() {
        let more = args.len() - i - 1;
        if args[i].eq_ignore_ascii_case(b"auth") && more >= 2 {
            match acl::login(Some(args[i + 1]), args[i + 2], st, shared, topo) {
                Ok(u) => user = Some(u),
                Err(e) => return e.encode(enc),
            }
            authed = true;
            i += 3;
        } else if args[i].eq_ignore_ascii_case(b"setname") && more >= 1 {
            if let Err(e) = check_name(args[i + 1]) {
                return enc.error(e);
            }
            name = Some(Bytes::copy_from_slice(args[i + 1]));
            i += 2;
        } else {
            return enc.error(&format!(
                "ERR Syntax error in HELLO option '{}'",
                command::printable(args[i], 64)
            ));
        }
    }
    if !authed {
        return enc.error("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time");
    }
    if let Some(u) = user {
        match acl::seat(st, shared, u) {
            Ok(u) => st.user = u,
            Err(e) => return e.encode(enc),
        }
    }
    st.authenticated = true;
    if name.is_some() {
        st.name = name;
    }
    st.proto = proto;
    enc.proto = proto;
    enc.map(7);
    enc.bulk(b"server");
    enc.bulk(b"redis");
    enc.bulk(b"version");
    enc.bulk(REDIS_VERSION.as_bytes());
    enc.bulk(b"proto");
    enc.integer(if proto == Protocol::Resp3 { 3 } else { 2 });
    enc.bulk(b"id");
    enc.integer(st.id as i64);
    enc.bulk(b"mode");
    enc.bulk(b"standalone");
    enc.bulk(b"role");
    enc.bulk(b"master");
    enc.bulk(b"modules");
    enc.array(0);
}

fn check_name(name: &[u8]) -> Result<(), &'static str> {
    if name.iter().any(|&c| !(b'!'..=b'~').contains(&c)) {
        Err("ERR Client names cannot contain spaces, newlines or special characters.")
    } else {
        Ok(())
    }
}

fn client(args: &[&[u8]], st: &mut ClientState, shared: &Shared, enc: &mut Encoder<'_>) -> Outcome {
    let sub = args[1].to_ascii_lowercase();
    match sub.as_slice() {
        b"info" | b"list" | b"kill" | b"pause" | b"unpause" | b"no-evict" | b"reply" | b"trackinginfo" => {
            return match clients::run(&sub, args, st, shared, enc) {
                clients::After::Reply => Outcome::Reply,
                clients::After::Close => Outcome::Close,
            };
        }
        b"setname" => match check_name(args[2]) {
            Ok(()) => {
                st.name = if args[2].is_empty() {
                    None
                } else {
                    Some(Bytes::copy_from_slice(args[2]))
                };
                enc.ok();
            }
            Err(e) => enc.error(e),
        },
        b"getname" => match &st.name {
            Some(n) => enc.bulk(n),
            None => enc.null(),
        },
        b"id" => enc.integer(st.id as i64),
        b"setinfo" => {
            let attr = args[2].to_ascii_lowercase();
            let value = args[3];
            if value.iter().any(|&c| !(b'!'..=b'~').contains(&c)) {
                enc.error(&format!(
                    "ERR {} cannot contain spaces, newlines or special characters.",
                    String::from_utf8_lossy(&attr)
                ));
                return Outcome::Reply;
            }
            match attr.as_slice() {
                b"lib-name" => st.lib_name = Some(Bytes::copy_from_slice(value)),
                b"lib-ver" => st.lib_ver = Some(Bytes::copy_from_slice(value)),
                _ => {
                    enc.error(&format!(
                        "ERR Unrecognized option '{}'",
                        command::printable(args[2], 64)
                    ));
                    return Outcome::Reply;
                }
            }
            enc.ok();
        }
        _ => {
            let lines = [
                "CLIENT <subcommand> [<arg> [value] [opt] ...]. shardis serves:",
                "GETNAME",
                "ID",
                "INFO",
                "KILL <ip:port> | KILL <ID|ADDR|LADDR|USER|TYPE|SKIPME|MAXAGE value> ...",
                "LIST [TYPE <NORMAL|PUBSUB|MASTER|REPLICA>] [ID <id> ...]",
                "NO-EVICT <ON|OFF>",
                "PAUSE <timeout> [WRITE|ALL]",
                "REPLY <ON|OFF|SKIP>",
                "SETINFO <LIB-NAME|LIB-VER> <value>",
                "SETNAME <name>",
                "TRACKINGINFO",
                "UNPAUSE",
            ];
            enc.help(&lines);
        }
    }
    Outcome::Reply
}

fn command_cmd(args: &[&[u8]], enc: &mut Encoder<'_>) {
    let sub = args.get(1).map(|s| s.to_ascii_lowercase()).unwrap_or_default();
    let served: Vec<&spec::CommandSpec> = table::COMMANDS.iter().filter(|s| command::served(s)).collect();
    match sub.as_slice() {
        b"" => {
            enc.array(served.len());
            for s in served {
                info::encode_command_info(s, enc.resp3(), enc.buf);
            }
        }
        b"count" => enc.integer(served.len() as i64),
        b"list" => {
            enc.array(served.len());
            for s in served {
                enc.bulk(s.name.as_bytes());
            }
        }
        b"info" => {
            enc.array(args.len() - 2);
            for name in &args[2..] {
                match served.iter().find(|s| s.name.as_bytes().eq_ignore_ascii_case(name)) {
                    Some(s) => info::encode_command_info(s, enc.resp3(), enc.buf),
                    None => enc.null(),
                }
            }
        }
        // The proxy serves no command documentation; an empty answer tells
        // clients such as redis-cli to go on without hints.
        b"docs" => enc.map(0),
        b"getkeys" => match command::lookup(&args[2..]) {
            Err(e) => e.encode(enc),
            Ok(l) => {
                let mut idx = Vec::new();
                if keys::key_indices(l.spec, &args[2..], &mut idx).is_err() || idx.is_empty() {
                    return enc.error("ERR Invalid arguments specified for command");
                }
                enc.array(idx.len());
                for i in idx {
                    enc.bulk(args[2 + i]);
                }
            }
        },
        _ => {
            let lines = [
                "COMMAND <subcommand>. shardis serves:",
                "(no subcommand)",
                "COUNT",
                "DOCS",
                "GETKEYS",
                "INFO",
                "LIST",
            ];
            enc.help(&lines);
        }
    }
}

/// `# Migration`: the key move of the last topology change, if it moved any
/// slot (see [`crate::migration`]).
fn migration_info(topo: &Topology) -> String {
    let Some(m) = &topo.migration else {
        return "# Migration\r\nmigration_in_progress:0\r\n\r\n".to_string();
    };
    let st = &m.stats;
    let secs = m.finished_after().map(|d| d.as_secs_f64());
    format!(
        "# Migration\r\nmigration_in_progress:{}\r\nmigration_from_epoch:{}\r\nmigration_to_epoch:{}\r\nmigration_shards_left:{}\r\nmigration_keys_scanned:{}\r\nmigration_keys_moved:{}\r\nmigration_keys_moved_on_demand:{}\r\nmigration_reads_old_owner:{}\r\nmigration_reads_new_owner:{}\r\nmigration_keys_superseded:{}\r\nmigration_errors:{}\r\nmigration_abandoned:{}\r\nmigration_seconds:{}\r\n\r\n",
        u8::from(m.active()),
        m.from_epoch,
        m.to_epoch,
        m.sources_left(),
        st.scanned.load(Ordering::Relaxed),
        st.moved.load(Ordering::Relaxed),
        st.moved_on_demand.load(Ordering::Relaxed),
        st.read_old.load(Ordering::Relaxed),
        st.read_new.load(Ordering::Relaxed),
        st.superseded.load(Ordering::Relaxed),
        st.errors.load(Ordering::Relaxed),
        u8::from(m.abandoned()),
        secs.map_or_else(|| "running".to_string(), |s| format!("{s:.3}")),
    )
}

/// The INFO reply: the proxy's own sections now, the shards' to merge
/// when they answer (see [`crate::info`]).
fn info_request(args: &[&[u8]], st: &ClientState, shared: &Shared, topo: &Topology) -> Info {
    let sections = crate::info::wanted(args);
    let want = |s: &str| sections.contains(&s);
    let mut own = Vec::new();
    let mut fields = Vec::new();
    if want("server") {
        own.push((
            "server",
            crate::info::server(shared, st.laddr.rsplit(':').next().unwrap_or("")),
        ));
    }
    if want("clients") {
        own.push((
            "clients",
            format!(
                "# Clients\r\nconnected_clients:{}\r\ncluster_connections:0\r\nmaxclients:{}\r\nclient_recent_max_input_buffer:0\r\nclient_recent_max_output_buffer:0\r\nblocked_clients:{}\r\ntracking_clients:0\r\nclients_in_timeout_table:0\r\n\r\n",
                shared.stats.clients.load(Ordering::Relaxed),
                topo.config.limits.max_clients,
                shared.stats.blocked.load(Ordering::Relaxed),
            ),
        ));
    }
    if want("memory") {
        fields.extend(crate::info::memory_fields());
    }
    if want("stats") {
        fields.extend(crate::info::stats_fields(shared));
    }
    if want("replication") {
        own.push(("replication", crate::info::replication()));
    }
    if want("cpu") {
        own.push(("cpu", crate::info::cpu()));
    }
    if want("modules") {
        own.push(("modules", "# Modules\r\n\r\n".to_string()));
    }
    if want("cluster") {
        own.push(("cluster", "# Cluster\r\ncluster_enabled:0\r\n\r\n".to_string()));
    }
    if want("proxy") {
        let mut t = format!(
            "# Proxy\r\nepoch:{}\r\nshards:{}\r\nslots:{}\r\n",
            topo.epoch,
            topo.shards.len(),
            topo.ring.slots()
        );
        let counts = topo.ring.slot_counts();
        for (i, s) in topo.shards.iter().enumerate() {
            t.push_str(&format!(
                "shard{i}:name={},addr={},slots={}{}\r\n",
                s.name(),
                s.spec.addr,
                counts.get(i).copied().unwrap_or(0),
                crate::failover::shard_info(s)
            ));
        }
        t.push_str(&crate::failover::sentinel_info(shared, topo));
        t.push_str("\r\n");
        own.push(("proxy", t));
    }
    if want("migration") {
        own.push(("migration", migration_info(topo)));
    }
    if want("locks") {
        let l = &shared.locks;
        let group: Vec<&str> = topo.locks.current.iter().map(|m| &**m).collect();
        own.push(("locks", format!(
            "# Locks\r\nlock_group:{}\r\nlock_group_joint:{}\r\nlock_granted:{}\r\nlock_denied:{}\r\nlock_no_quorum:{}\r\nlock_member_vote_failures:{}\r\nlock_members_resting:{}\r\n\r\n",
            group.join(","),
            topo.locks.previous.len(),
            l.granted.load(Ordering::Relaxed),
            l.denied.load(Ordering::Relaxed),
            l.no_quorum.load(Ordering::Relaxed),
            l.member_failures(),
            resting_members(topo, l).join(","),
        )));
    }
    Info::new(sections, own, fields, topo.names.clone())
}
