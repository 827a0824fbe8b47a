//! CLIENT subcommands that act on the proxy's own clients as a whole: LIST
//! and INFO (Redis's line format), KILL (old and new forms), PAUSE /
//! UNPAUSE, NO-EVICT, REPLY, TRACKINGINFO. The registry they read and act
//! on is [`crate::registry`]; parsing and formatting are pure and unit-tested
//! here.

use std::time::{Duration, Instant};

use crate::client::{ClientState, ReplyMode};
use crate::protocol::Encoder;
use crate::registry::{Entry, PauseMode, flag};
use crate::state::Shared;

/// CLIENT LIST's / KILL's `TYPE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientType {
    Normal,
    Pubsub,
    /// `master`, `replica` / `slave`: the proxy has none of those.
    Replication,
}

fn client_type(name: &[u8]) -> Result<ClientType, String> {
    match name.to_ascii_lowercase().as_slice() {
        b"normal" => Ok(ClientType::Normal),
        b"pubsub" => Ok(ClientType::Pubsub),
        b"master" | b"replica" | b"slave" => Ok(ClientType::Replication),
        _ => Err(format!("ERR Unknown client type '{}'", String::from_utf8_lossy(name))),
    }
}

/// As Redis's `getClientType`: a monitor is a normal client.
fn type_of(flags: u32) -> ClientType {
    if flags & flag::PUBSUB != 0 {
        ClientType::Pubsub
    } else {
        ClientType::Normal
    }
}

/// The filters of `CLIENT KILL`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct KillFilter {
    pub id: Option<u64>,
    pub kind: Option<ClientType>,
    pub addr: Option<Vec<u8>>,
    pub laddr: Option<Vec<u8>>,
    /// `USER`: every client of the proxy is `default`; only it is known.
    pub user: bool,
    pub skipme: bool,
    /// Kill clients connected longer than this many seconds (Redis 7.4's
    /// `MAXAGE`).
    pub maxage: Option<u64>,
}

/// `CLIENT KILL ip:port` (answers OK or "No such client") or the filter form
/// (answers how many were killed).
#[derive(Debug, PartialEq, Eq)]
pub enum Kill {
    Old(Vec<u8>),
    New(KillFilter),
}

fn int(arg: &[u8]) -> Option<i64> {
    std::str::from_utf8(arg).ok()?.parse().ok()
}

/// Parses `CLIENT KILL ...` (`args[0]` is CLIENT) with Redis 7.0's errors.
pub fn parse_kill(args: &[&[u8]]) -> Result<Kill, String> {
    if args.len() == 3 {
        return Ok(Kill::Old(args[2].to_vec()));
    }
    if args.len() % 2 != 0 {
        return Err("ERR syntax error".into());
    }
    let mut f = KillFilter {
        skipme: true,
        ..KillFilter::default()
    };
    for pair in args[2..].chunks(2) {
        let (opt, v) = (pair[0].to_ascii_lowercase(), pair[1]);
        match opt.as_slice() {
            b"id" => match int(v) {
                Some(id) if id > 0 => f.id = Some(id as u64),
                _ => return Err("ERR client-id should be greater than 0".into()),
            },
            b"type" => f.kind = Some(client_type(v)?),
            b"addr" => f.addr = Some(v.to_vec()),
            b"laddr" => f.laddr = Some(v.to_vec()),
            b"user" if v == b"default" => f.user = true,
            b"user" => return Err(format!("ERR No such user '{}'", String::from_utf8_lossy(v))),
            b"skipme" if v.eq_ignore_ascii_case(b"yes") => f.skipme = true,
            b"skipme" if v.eq_ignore_ascii_case(b"no") => f.skipme = false,
            b"maxage" => match int(v) {
                Some(age) if age >= 0 => f.maxage = Some(age as u64),
                _ => return Err("ERR syntax error".into()),
            },
            _ => return Err("ERR syntax error".into()),
        }
    }
    Ok(Kill::New(f))
}

impl KillFilter {
    fn matches(&self, e: &Entry, me: u64, now: Instant) -> bool {
        self.id.is_none_or(|id| id == e.id)
            && self.kind.is_none_or(|k| k == type_of(e.flags()))
            && self.addr.as_ref().is_none_or(|a| a == e.addr.as_bytes())
            && self.laddr.as_ref().is_none_or(|a| a == e.laddr.as_bytes())
            && !(self.skipme && e.id == me)
            && self.maxage.is_none_or(|m| e.age(now) > m)
    }
}

/// What CLIENT LIST writes of one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub id: u64,
    pub addr: String,
    pub laddr: String,
    pub fd: i32,
    pub name: String,
    pub age: u64,
    pub idle: u64,
    pub flags: u32,
    pub multi: i64,
    /// Channels, patterns, shard channels.
    pub subs: [u32; 3],
    /// Reply bytes held for the client, and the part encoded for its socket.
    pub output: [u64; 2],
    pub cmd: &'static str,
    pub resp: u8,
    pub lib_name: String,
    pub lib_ver: String,
    pub user: String,
}

impl Line {
    pub fn of(e: &Entry, now: Instant) -> Line {
        let d = e.desc();
        let s = |b: Option<bytes::Bytes>| b.map(|v| String::from_utf8_lossy(&v).into_owned()).unwrap_or_default();
        Line {
            id: e.id,
            addr: e.addr.clone(),
            laddr: e.laddr.clone(),
            fd: e.fd(),
            name: s(d.name),
            age: e.age(now),
            idle: e.idle(now),
            flags: e.flags(),
            multi: e.multi(),
            subs: e.subs(),
            output: e.output(),
            cmd: e.cmd(),
            resp: d.resp,
            lib_name: s(d.lib_name),
            lib_ver: s(d.lib_ver),
            user: d
                .user
                .map_or_else(|| "default".into(), |u| String::from_utf8_lossy(&u).into_owned()),
        }
    }

    /// Redis 7.0's field list and order (then 7.2's `lib-name`,
    /// `lib-ver`), one line with its `\n`. Of the buffer fields, `omem`
    /// and `tot-mem` are the reply bytes the proxy holds for the client
    /// (what its output buffer limit is checked against, as Redis checks
    /// `omem`) and `obl` the part of them encoded for its socket; the others
    /// are 0: the proxy's buffers are not Redis's.
    pub fn write(&self, out: &mut String) {
        use std::fmt::Write;
        let mut flags = String::new();
        for (bit, c) in [
            (flag::MONITOR, 'O'),
            (flag::PUBSUB, 'P'),
            (flag::MULTI, 'x'),
            (flag::BLOCKED, 'b'),
            (flag::NO_EVICT, 'e'),
        ] {
            if self.flags & bit != 0 {
                flags.push(c);
            }
        }
        if flags.is_empty() {
            flags.push('N');
        }
        let _ = writeln!(
            out,
            "id={} addr={} laddr={} fd={} name={} age={} idle={} flags={} db=0 sub={} psub={} ssub={} multi={} qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl={} oll=0 omem={} tot-mem={} events=r cmd={} user={} redir=-1 resp={} lib-name={} lib-ver={}",
            self.id,
            self.addr,
            self.laddr,
            self.fd,
            self.name,
            self.age,
            self.idle,
            flags,
            self.subs[0],
            self.subs[1],
            self.subs[2],
            self.multi,
            self.output[1],
            self.output[0],
            self.output[0],
            self.cmd,
            self.user,
            self.resp,
            self.lib_name,
            self.lib_ver,
        );
    }
}

/// CLIENT LIST's arguments: `TYPE t` or `ID id ...` (Redis 7.0's errors).
fn list_filter(args: &[&[u8]]) -> Result<(Option<ClientType>, Option<Vec<u64>>), String> {
    match args.get(2) {
        None => Ok((None, None)),
        Some(o) if args.len() == 4 && o.eq_ignore_ascii_case(b"type") => Ok((Some(client_type(args[3])?), None)),
        Some(o) if args.len() > 3 && o.eq_ignore_ascii_case(b"id") => {
            let mut ids = Vec::new();
            for a in &args[3..] {
                match int(a) {
                    Some(id) if id > 0 => ids.push(id as u64),
                    _ => return Err("ERR Invalid client ID".into()),
                }
            }
            Ok((None, Some(ids)))
        }
        Some(_) => Err("ERR syntax error".into()),
    }
}

/// The longest CLIENT PAUSE accepted, in milliseconds (about 100 years).
const MAX_PAUSE_MS: i64 = 100 * 365 * 24 * 3600 * 1000;

/// What the session does after one of these subcommands.
pub enum After {
    Reply,
    /// The caller killed itself: close after the reply.
    Close,
}

/// CLIENT LIST / INFO / KILL / PAUSE / UNPAUSE / NO-EVICT / REPLY /
/// TRACKINGINFO (`sub` lowercase).
pub fn run(sub: &[u8], args: &[&[u8]], st: &mut ClientState, shared: &Shared, enc: &mut Encoder<'_>) -> After {
    let now = Instant::now();
    let fail = |enc: &mut Encoder<'_>, e: String| {
        enc.error(&e);
        After::Reply
    };
    match sub {
        b"info" => {
            let mut s = String::new();
            Line::of(&st.entry, now).write(&mut s);
            enc.verbatim(s.as_bytes());
        }
        b"list" => {
            let (kind, ids) = match list_filter(args) {
                Ok(f) => f,
                Err(e) => return fail(enc, e),
            };
            let mut s = String::new();
            for e in shared.clients.snapshot() {
                if kind.is_some_and(|k| k != type_of(e.flags())) || ids.as_ref().is_some_and(|ids| !ids.contains(&e.id))
                {
                    continue;
                }
                Line::of(&e, now).write(&mut s);
            }
            enc.verbatim(s.as_bytes());
        }
        b"kill" => {
            let me = st.id;
            match parse_kill(args) {
                Err(e) => return fail(enc, e),
                Ok(Kill::Old(addr)) => {
                    let (n, self_too) = shared.clients.kill(me, |e| e.addr.as_bytes() == addr.as_slice());
                    if n == 0 {
                        enc.error("ERR No such client");
                    } else {
                        enc.ok();
                    }
                    if self_too {
                        return After::Close;
                    }
                }
                Ok(Kill::New(f)) => {
                    let (n, self_too) = shared.clients.kill(me, |e| f.matches(e, me, now));
                    enc.integer(n as i64);
                    if self_too {
                        return After::Close;
                    }
                }
            }
        }
        b"pause" => {
            let timeout = match int(args[2]) {
                Some(ms) if ms < 0 => return fail(enc, "ERR timeout is negative".into()),
                // About 100 years: past it an end time would not be representable.
                Some(ms) if ms > MAX_PAUSE_MS => return fail(enc, "ERR timeout is out of range".into()),
                Some(ms) => Duration::from_millis(ms as u64),
                None => return fail(enc, "ERR timeout is not an integer or out of range".into()),
            };
            let mode = match args.get(3) {
                None => PauseMode::All,
                Some(m) if m.eq_ignore_ascii_case(b"write") => PauseMode::Write,
                Some(m) if m.eq_ignore_ascii_case(b"all") => PauseMode::All,
                Some(_) => return fail(enc, "ERR CLIENT PAUSE mode must be WRITE or ALL".into()),
            };
            if args.len() > 4 {
                return fail(enc, "ERR syntax error".into());
            }
            shared.clients.pause.pause(mode, timeout);
            enc.ok();
        }
        b"unpause" => {
            shared.clients.pause.unpause();
            enc.ok();
        }
        b"no-evict" => {
            let on = if args[2].eq_ignore_ascii_case(b"on") {
                true
            } else if args[2].eq_ignore_ascii_case(b"off") {
                false
            } else {
                return fail(enc, "ERR syntax error".into());
            };
            st.entry.set_flag(flag::NO_EVICT, on);
            enc.ok();
        }
        b"reply" => {
            // OFF and SKIP are not answered (the encoder stays empty).
            match args[2].to_ascii_lowercase().as_slice() {
                b"on" => {
                    st.reply = ReplyMode::On;
                    enc.ok();
                }
                b"off" => st.reply = ReplyMode::Off,
                b"skip" => st.reply = ReplyMode::SkipNext,
                _ => return fail(enc, "ERR syntax error".into()),
            }
        }
        b"trackinginfo" => {
            enc.map(3);
            enc.bulk(b"flags");
            enc.set(1);
            enc.bulk(b"off");
            enc.bulk(b"redirect");
            enc.integer(-1);
            enc.bulk(b"prefixes");
            enc.array(0);
        }
        _ => enc.error("ERR syntax error"),
    }
    After::Reply
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<&[u8]> {
        s.split(' ').map(str::as_bytes).collect()
    }

    #[test]
    fn kill_filters_parse_like_redis() {
        assert_eq!(
            parse_kill(&args("client kill 1.2.3.4:5")),
            Ok(Kill::Old(b"1.2.3.4:5".to_vec()))
        );
        let Ok(Kill::New(f)) = parse_kill(&args(
            "client kill id 7 type pubsub skipme no addr a:1 laddr b:2 user default maxage 3",
        )) else {
            panic!("parses")
        };
        assert_eq!(
            f,
            KillFilter {
                id: Some(7),
                kind: Some(ClientType::Pubsub),
                addr: Some(b"a:1".to_vec()),
                laddr: Some(b"b:2".to_vec()),
                user: true,
                skipme: false,
                maxage: Some(3),
            }
        );
        let Ok(Kill::New(f)) = parse_kill(&args("client kill type normal")) else {
            panic!()
        };
        assert!(f.skipme, "SKIPME defaults to yes");
        let err = |s| parse_kill(&args(s)).unwrap_err();
        assert_eq!(err("client kill id abc"), "ERR client-id should be greater than 0");
        assert_eq!(err("client kill id 0"), "ERR client-id should be greater than 0");
        assert_eq!(err("client kill type foo"), "ERR Unknown client type 'foo'");
        assert_eq!(err("client kill skipme maybe"), "ERR syntax error");
        assert_eq!(err("client kill id 1 type"), "ERR syntax error");
        assert_eq!(err("client kill bogus 1"), "ERR syntax error");
        assert_eq!(err("client kill user nob"), "ERR No such user 'nob'");
    }

    #[test]
    fn list_filters_parse_like_redis() {
        assert_eq!(list_filter(&args("client list")), Ok((None, None)));
        assert_eq!(
            list_filter(&args("client list TYPE normal")),
            Ok((Some(ClientType::Normal), None))
        );
        assert_eq!(list_filter(&args("client list id 3 4")), Ok((None, Some(vec![3, 4]))));
        assert_eq!(
            list_filter(&args("client list type x")).unwrap_err(),
            "ERR Unknown client type 'x'"
        );
        assert_eq!(
            list_filter(&args("client list id x")).unwrap_err(),
            "ERR Invalid client ID"
        );
        assert_eq!(list_filter(&args("client list foo")).unwrap_err(), "ERR syntax error");
    }

    #[test]
    fn a_line_has_redis_fields_in_redis_order() {
        let mut s = String::new();
        let line = Line {
            id: 3,
            addr: "127.0.0.1:49554".into(),
            laddr: "127.0.0.1:6380".into(),
            fd: 8,
            name: "web".into(),
            age: 5,
            idle: 1,
            flags: flag::MULTI | flag::BLOCKED,
            multi: 2,
            subs: [2, 1, 4],
            output: [900, 300],
            cmd: "client|list",
            resp: 3,
            lib_name: "redis-py".into(),
            lib_ver: "5.0".into(),
            user: "default".into(),
        };
        line.write(&mut s);
        assert_eq!(
            s,
            "id=3 addr=127.0.0.1:49554 laddr=127.0.0.1:6380 fd=8 name=web age=5 idle=1 flags=xb db=0 sub=2 psub=1 ssub=4 multi=2 qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=300 oll=0 omem=900 tot-mem=900 events=r cmd=client|list user=default redir=-1 resp=3 lib-name=redis-py lib-ver=5.0\n"
        );
        let fields: Vec<&str> = s.split(' ').map(|f| f.split('=').next().unwrap_or("")).collect();
        // Redis 7.0.15's CLIENT LIST, field by field, then 7.2's two.
        let redis = "id addr laddr fd name age idle flags db sub psub ssub multi qbuf qbuf-free argv-mem multi-mem rbs rbp obl oll omem tot-mem events cmd user redir resp lib-name lib-ver";
        assert_eq!(fields.join(" "), redis);
        let mut n = String::new();
        Line { flags: 0, ..line }.write(&mut n);
        assert!(n.contains(" flags=N "));
    }
}
