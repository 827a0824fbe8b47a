//! The generated command table, the `COMMAND INFO` encoder and the key finder, checked
//! against a live redis-server (started here on a free port, killed when the test ends,
//! pass or fail). Talks raw RESP over a TcpStream so replies are compared byte for byte.
//!
//! Needs `redis-server` on PATH (CI installs it); the test fails if it is missing.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::BytesMut;
use shardis::command::info::encode_command_info;
use shardis::command::keys::{CommandSpec, FLAG_NAMES, KeysError, key_indices, lookup, lookup_argv, lookup_sub};
use shardis::command::table::COMMANDS;
use shardis::testkit::RedisNode;

// ---------------------------------------------------------------------------------------
// The redis-server is `shardis::testkit::RedisNode` (checked to be ours, killed on drop).

fn connect(server: &RedisNode) -> Conn {
    Conn::connect(server.port).expect("connect to redis-server")
}

// ---------------------------------------------------------------------------------------
// Raw RESP: write a command, read exactly one reply's bytes.

struct Conn {
    sock: TcpStream,
    buf: Vec<u8>,
    port: u16,
    /// Sent HELLO 3: a reconnect sends it again.
    resp3: bool,
}

impl Conn {
    fn connect(port: u16) -> std::io::Result<Conn> {
        let sock = TcpStream::connect(("127.0.0.1", port))?;
        sock.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Conn {
            sock,
            buf: Vec::new(),
            port,
            resp3: false,
        })
    }

    /// Sends one command and returns the raw bytes of its reply. A connection
    /// reset before any byte of the reply (seen about once in 20 CI runs, not
    /// reproducible alone) reconnects and asks again, up to 3 times: these
    /// are read-only questions, and a server that is really gone still fails
    /// the reconnect.
    fn call(&mut self, args: &[&[u8]]) -> Vec<u8> {
        if args.first().is_some_and(|a| a.eq_ignore_ascii_case(b"hello")) {
            self.resp3 = args.get(1).is_some_and(|v| *v == b"3");
        }
        let mut req = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            req.extend_from_slice(a);
            req.extend_from_slice(b"\r\n");
        }
        for attempt in 1.. {
            match self.try_call(&req) {
                Ok(reply) => return reply,
                Err(e)
                    if attempt < 3
                        && self.buf.is_empty()
                        && matches!(
                            e.kind(),
                            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                        ) =>
                {
                    eprintln!(
                        "redis-server on port {} reset the connection ({e}); reconnecting",
                        self.port
                    );
                    let resp3 = self.resp3;
                    *self = Conn::connect(self.port).expect("reconnect to redis-server");
                    if resp3 {
                        self.call(&[b"HELLO", b"3"]);
                    }
                }
                Err(e) => panic!(
                    "read from redis-server on port {}: {e} ({:?}), {} bytes buffered",
                    self.port,
                    e.kind(),
                    self.buf.len()
                ),
            }
        }
        unreachable!("the loop returns or panics")
    }

    fn try_call(&mut self, req: &[u8]) -> std::io::Result<Vec<u8>> {
        self.sock.write_all(req)?;
        loop {
            let mut pos = 0;
            if parse(&self.buf, &mut pos).is_some() {
                let reply = self.buf[..pos].to_vec();
                self.buf.drain(..pos);
                return Ok(reply);
            }
            let mut chunk = [0u8; 65536];
            let n = match self.sock.read(&mut chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            assert!(n > 0, "redis-server closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn call_frame(&mut self, args: &[&[u8]]) -> (Vec<u8>, Frame) {
        let raw = self.call(args);
        let mut pos = 0;
        let frame = parse(&raw, &mut pos).expect("complete reply");
        (raw, frame)
    }
}

/// One parsed RESP2/RESP3 value with its byte span in the reply.
#[derive(Debug)]
struct Frame {
    kind: u8,
    start: usize,
    end: usize,
    /// The line after the type byte, or a bulk string's payload.
    data: Vec<u8>,
    children: Vec<Frame>,
}

impl Frame {
    fn text(&self) -> &str {
        std::str::from_utf8(&self.data).expect("utf-8")
    }

    fn int(&self) -> i64 {
        assert_eq!(self.kind, b':', "expected an integer");
        self.text().parse().expect("integer")
    }

    fn texts(&self) -> Vec<String> {
        self.children.iter().map(|c| c.text().to_owned()).collect()
    }

    fn is_error(&self) -> bool {
        self.kind == b'-'
    }
}

/// Parses one frame at `*pos`; `None` when the buffer holds only part of it.
fn parse(buf: &[u8], pos: &mut usize) -> Option<Frame> {
    let start = *pos;
    let nl = buf[start..].windows(2).position(|w| w == b"\r\n")? + start;
    let kind = *buf.get(start)?;
    let line = buf[start + 1..nl].to_vec();
    *pos = nl + 2;
    let len = || -> i64 { std::str::from_utf8(&line).unwrap().parse().unwrap() };
    let mut frame = Frame {
        kind,
        start,
        end: 0,
        data: Vec::new(),
        children: Vec::new(),
    };
    match kind {
        b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => frame.data = line.clone(),
        b'$' | b'=' | b'!' => {
            let n = len();
            if n >= 0 {
                let n = n as usize;
                if buf.len() < *pos + n + 2 {
                    return None;
                }
                frame.data = buf[*pos..*pos + n].to_vec();
                *pos += n + 2;
            }
        }
        b'*' | b'~' | b'>' | b'%' => {
            let n = len();
            let n = if kind == b'%' { 2 * n } else { n };
            for _ in 0..n.max(0) {
                frame.children.push(parse(buf, pos)?);
            }
        }
        other => panic!("unexpected RESP type byte {:?}", other as char),
    }
    frame.end = *pos;
    Some(frame)
}

// ---------------------------------------------------------------------------------------
// (a) The table holds exactly the server's commands, with the same metadata.

fn flag_bits(names: &[String], owner: &str) -> u32 {
    names
        .iter()
        .map(|n| {
            FLAG_NAMES
                .iter()
                .find(|(_, name)| name == n)
                .unwrap_or_else(|| panic!("{owner}: flag {n:?} unknown to FLAG_NAMES"))
                .0
        })
        .fold(0, |a, b| a | b)
}

fn check_entry(live: &Frame, spec: &CommandSpec) {
    let c = &live.children;
    assert_eq!(c.len(), 10, "{}: COMMAND entry has 10 fields", spec.name);
    let name = c[0].text();
    assert_eq!(spec.name, name);
    assert_eq!(spec.arity as i64, c[1].int(), "{name}: arity");
    assert_eq!(spec.flags, flag_bits(&c[2].texts(), name), "{name}: flags");
    assert_eq!(spec.first_key as i64, c[3].int(), "{name}: first key");
    assert_eq!(spec.last_key as i64, c[4].int(), "{name}: last key");
    assert_eq!(spec.step as i64, c[5].int(), "{name}: step");
    assert_eq!(spec.acl_categories, c[6].texts(), "{name}: ACL categories");
    assert_eq!(spec.tips, c[7].texts(), "{name}: tips");
    assert_eq!(spec.key_specs.len(), c[8].children.len(), "{name}: key specs");
}

#[test]
fn table_matches_live_command() {
    let server = RedisNode::start();
    let mut conn = connect(&server);
    let (_, reply) = conn.call_frame(&[b"COMMAND"]);
    assert_eq!(reply.kind, b'*');

    let mut live_names = BTreeSet::new();
    for entry in &reply.children {
        let name = entry.children[0].text();
        live_names.insert(name.to_owned());
        let spec = lookup(name.as_bytes()).unwrap_or_else(|| panic!("{name} missing from table"));
        check_entry(entry, spec);
        let subs = &entry.children[9].children;
        assert_eq!(spec.subcommands.len(), subs.len(), "{name}: subcommand count");
        for sub in subs {
            let full = sub.children[0].text();
            live_names.insert(full.to_owned());
            let short = full
                .strip_prefix(name)
                .and_then(|s| s.strip_prefix('|'))
                .unwrap_or_else(|| panic!("subcommand {full} not named {name}|..."));
            let sub_spec = lookup_sub(spec, short.to_uppercase().as_bytes())
                .unwrap_or_else(|| panic!("{full} missing from table"));
            check_entry(sub, sub_spec);
            assert!(sub.children[9].children.is_empty(), "{full}: nested subcommands");
        }
    }

    // ...and vice versa.
    let mut table_names = BTreeSet::new();
    for c in COMMANDS {
        table_names.insert(c.name.to_owned());
        for s in c.subcommands {
            table_names.insert(s.name.to_owned());
        }
    }
    let missing_live: Vec<_> = table_names.difference(&live_names).collect();
    assert!(
        missing_live.is_empty(),
        "in the table but not on the server: {missing_live:?}"
    );
    assert_eq!(table_names, live_names);
    assert_eq!(COMMANDS.len(), reply.children.len());
}

// ---------------------------------------------------------------------------------------
// (b) COMMAND INFO bytes.

/// The bytes of one `COMMAND INFO` entry, with the subcommand array (listed in hash order
/// by Redis, which changes from one server start to the next) put in name order.
fn canonical_entry(raw: &[u8], entry: &Frame) -> Vec<u8> {
    assert_eq!(entry.children.len(), 10, "COMMAND INFO entry has 10 fields");
    let subs = &entry.children[9];
    let mut out = raw[entry.start..subs.start].to_vec();
    if subs.children.is_empty() {
        out.extend_from_slice(&raw[subs.start..subs.end]);
    } else {
        let header_end = subs.children[0].start;
        out.extend_from_slice(&raw[subs.start..header_end]);
        let mut sorted: Vec<&Frame> = subs.children.iter().collect();
        sorted.sort_by(|a, b| a.children[0].data.cmp(&b.children[0].data));
        for s in sorted {
            out.extend_from_slice(&canonical_entry(raw, s));
        }
    }
    assert_eq!(entry.end, subs.end, "subcommands are the last field");
    out
}

fn check_info_bytes(resp3: bool) {
    let server = RedisNode::start();
    let mut conn = connect(&server);
    if resp3 {
        let (_, hello) = conn.call_frame(&[b"HELLO", b"3"]);
        assert_eq!(hello.kind, b'%', "HELLO 3 switches to RESP3");
    }
    let mut checked = 0;
    let mut mismatches = Vec::new();
    let mut one = |name: &str, spec: &CommandSpec, conn: &mut Conn| {
        let (raw, reply) = conn.call_frame(&[b"COMMAND", b"INFO", name.as_bytes()]);
        assert_eq!(reply.kind, b'*');
        assert_eq!(reply.children.len(), 1, "{name}: one entry");
        let expected = canonical_entry(&raw, &reply.children[0]);
        let mut ours = BytesMut::new();
        encode_command_info(spec, resp3, &mut ours);
        if ours[..] != expected[..] {
            mismatches.push(format!(
                "{name} (resp3={resp3}):\n  redis: {}\n  ours:  {}",
                String::from_utf8_lossy(&expected).escape_debug(),
                String::from_utf8_lossy(&ours).escape_debug()
            ));
        }
        checked += 1;
    };
    for spec in COMMANDS {
        one(spec.name, spec, &mut conn);
        // Redis 7.0 also answers COMMAND INFO for "parent|sub" full names.
        for sub in spec.subcommands {
            one(sub.name, sub, &mut conn);
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {checked} entries differ:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    assert!(checked > 300, "checked {checked} entries");

    // The encoder writes Redis's own order of a COMMAND reply's fields: spot-check that the
    // full COMMAND reply is made of exactly these entries.
    let (raw, all) = conn.call_frame(&[b"COMMAND"]);
    let mut by_name = BTreeMap::new();
    for e in &all.children {
        by_name.insert(e.children[0].text().to_owned(), canonical_entry(&raw, e));
    }
    for spec in COMMANDS {
        let mut ours = BytesMut::new();
        encode_command_info(spec, resp3, &mut ours);
        assert_eq!(
            by_name.get(spec.name).map(Vec::as_slice),
            Some(&ours[..]),
            "COMMAND entry for {}",
            spec.name
        );
    }
}

#[test]
fn command_info_bytes_match_resp2() {
    check_info_bytes(false);
}

#[test]
fn command_info_bytes_match_resp3() {
    check_info_bytes(true);
}

// ---------------------------------------------------------------------------------------
// (c) key_indices agrees with COMMAND GETKEYS.

/// Invocations, and whether key_indices should vouch for its answer (`Ok`).
const INVOCATIONS: &[(&str, bool)] = &[
    // index + range
    ("GET k", true),
    ("SET k v", true),
    ("SET k v NX GET", true),
    ("GETEX k PERSIST", true),
    ("APPEND k v", true),
    ("MGET a b c", true),
    ("MSET a 1 b 2 c 3", true),
    ("MSETNX a 1 b 2", true),
    ("DEL a b c", true),
    ("UNLINK a", true),
    ("EXISTS a a b", true),
    ("TOUCH a b", true),
    ("RENAME a b", true),
    ("RENAMENX a b", true),
    ("COPY a b DB 1 REPLACE", true),
    ("LCS a b LEN", true),
    ("LMOVE a b LEFT RIGHT", true),
    ("BLMOVE a b LEFT RIGHT 0", true),
    ("RPOPLPUSH a b", true),
    ("BRPOPLPUSH a b 5", true),
    ("SMOVE a b m", true),
    ("BLPOP a b c 0", true),
    ("BZPOPMIN a b 1.5", true),
    ("SUNIONSTORE d a b", true),
    ("SDIFFSTORE d a", true),
    ("SINTER a b c", true),
    ("BITOP AND d a b c", true),
    ("BITOP NOT d a", true),
    ("BITFIELD k GET u8 0", true),
    ("BITFIELD k SET u8 0 1", true),
    ("BITFIELD_RO k GET u8 0", true),
    ("PFCOUNT a b", true),
    ("PFMERGE d a b", true),
    ("DUMP k", true),
    ("RESTORE k 0 payload REPLACE", true),
    ("XADD s * f v", true),
    ("XCLAIM s g c 0 1-1", true),
    ("XAUTOCLAIM s g c 0 0", true),
    ("GEOSEARCHSTORE d s FROMLONLAT 0 0 BYRADIUS 1 km", true),
    ("GEORADIUS_RO k 0 0 1 km", true),
    // subcommands
    ("OBJECT ENCODING k", true),
    ("OBJECT FREQ k", true),
    ("XGROUP CREATE s g $ MKSTREAM", true),
    ("XGROUP DESTROY s g", true),
    ("XGROUP CREATECONSUMER s g c", true),
    ("XINFO STREAM s FULL", true),
    ("MEMORY USAGE k SAMPLES 5", true),
    // index + keynum
    ("EVAL s 2 a b x y", true),
    ("EVAL s 0", true),
    ("EVAL s 0 x y", true),
    ("EVALSHA 0123 1 a", true),
    ("EVAL_RO s 1 a x", true),
    ("FCALL f 2 a b x", true),
    ("FCALL_RO f 0 x", true),
    ("ZUNIONSTORE d 2 a b WEIGHTS 1 2", true),
    ("ZINTERSTORE d 1 a AGGREGATE MAX", true),
    ("ZDIFFSTORE d 2 a b", true),
    ("ZUNION 2 a b WITHSCORES", true),
    ("ZINTER 3 a b c", true),
    ("ZDIFF 1 a", true),
    ("ZINTERCARD 2 a b LIMIT 5", true),
    ("SINTERCARD 3 a b c", true),
    ("LMPOP 2 a b LEFT COUNT 2", true),
    ("BLMPOP 0 2 a b RIGHT", true),
    ("ZMPOP 1 a MIN", true),
    ("BZMPOP 1.5 2 a b MAX COUNT 3", true),
    // keyword
    ("XREAD STREAMS a 0", true),
    ("XREAD COUNT 2 STREAMS a b 0 0", true),
    ("XREAD COUNT 2 BLOCK 10 STREAMS a b c 0 0 0", true),
    ("XREADGROUP GROUP g c STREAMS a 0", true),
    ("XREADGROUP GROUP g c COUNT 1 NOACK STREAMS a b > >", true),
    ("XREAD STREAMS streams 0", true),
    ("GEORADIUS k 0 0 1 km", true),
    ("GEORADIUS k 0 0 1 km STORE d", true),
    ("GEORADIUS k 0 0 1 km STOREDIST d", true),
    ("GEORADIUS k 0 0 1 km STORE d STOREDIST e", true),
    ("GEORADIUSBYMEMBER k m 1 km STORE d", true),
    ("GEORADIUSBYMEMBER k m 1 km WITHDIST", true),
    // unknown / incomplete specs: the special procedures
    ("SORT k", true),
    ("SORT k STORE d", true),
    ("SORT k BY w_* LIMIT 0 10 GET # GET o_* DESC ALPHA STORE d", true),
    ("SORT k STORE d1 STORE d2", true),
    ("SORT k GET store STORE d", true),
    ("SORT_RO k BY w_* GET #", true),
    ("MIGRATE h 6379 k 0 5000", true),
    ("MIGRATE h 6379 k 0 5000 COPY REPLACE", true),
    ("MIGRATE h 6379 \"\" 0 5000 KEYS a b c", true),
    ("MIGRATE h 6379 \"\" 0 5000 COPY AUTH pw KEYS a", true),
    ("MIGRATE h 6379 \"\" 0 5000 AUTH2 u pw KEYS a b", true),
    // keyless commands (COMMAND GETKEYS: no key arguments)
    ("PING hello", true),
    ("CONFIG GET maxmemory", true),
    ("SPUBLISH chan msg", true),
    // malformed: COMMAND GETKEYS refuses, or lists keys of a command Redis would reject
    ("GET", false),
    ("GET a b", false),
    ("MSET a", false),
    ("MSET a 1 b", false),
    ("EVAL s 3 a b", false),
    ("EVAL s -1 a", false),
    ("EVAL s x a", false),
    ("EVAL s +1 a", false),
    ("EVAL s 4294967297 a", false),
    ("ZUNIONSTORE d 0 a", false),
    ("ZUNIONSTORE d 5 a b", false),
    ("ZUNIONSTORE d 02 a b", false),
    ("SINTERCARD 0 a", false),
    ("LMPOP 3 a b", false),
    ("XREAD COUNT 1 NOACK", false),
    ("XREAD STREAMS a b 0", false),
    ("XREADGROUP GROUP g c STREAMS a", false),
    ("MIGRATE h 6379 \"\" 0 5000 KEYS", true),
];

/// Splits an invocation on spaces; `""` is an empty argument, `\0` a NUL byte.
fn args_of(line: &str) -> Vec<Vec<u8>> {
    line.split(' ')
        .map(|w| {
            if w == "\"\"" {
                Vec::new()
            } else {
                w.replace("\\0", "\0").into_bytes()
            }
        })
        .collect()
}

#[test]
fn key_indices_match_command_getkeys() {
    assert!(INVOCATIONS.len() >= 60);
    let server = RedisNode::start();
    let mut conn = connect(&server);
    let mut failures = Vec::new();
    let extra = [("XREAD STREAMS\\0junk a 0", true)];
    for &(line, expect_ok) in INVOCATIONS.iter().chain(extra.iter()) {
        let owned = args_of(line);
        let args: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
        let spec = lookup_argv(&args).unwrap_or_else(|| panic!("{line}: unknown command"));

        let mut out = vec![usize::MAX];
        let result = key_indices(spec, &args, &mut out);
        let ours: Vec<&[u8]> = out
            .iter()
            .map(|&i| *args.get(i).unwrap_or_else(|| panic!("{line}: index {i} out of range")))
            .collect();

        let mut request: Vec<&[u8]> = vec![b"COMMAND", b"GETKEYS"];
        request.extend(&args);
        let (_, live) = conn.call_frame(&request);

        let mut problems = Vec::new();
        if result.is_ok() != expect_ok {
            problems.push(format!("expected ok={expect_ok}, got {result:?}"));
        }
        if live.is_error() {
            let msg = live.text();
            if msg.contains("no key arguments") {
                // A keyless command: nothing to route by.
                if !out.is_empty() {
                    problems.push(format!("keyless, but we found {out:?}"));
                }
            } else {
                if result.is_ok() {
                    problems.push(format!("GETKEYS refuses ({msg}) but we said Ok"));
                }
                if msg.contains("number of arguments") && result != Err(KeysError::Arity) {
                    problems.push(format!("GETKEYS: {msg}; we said {result:?}"));
                }
            }
        } else {
            let theirs: Vec<&[u8]> = live.children.iter().map(|c| c.data.as_slice()).collect();
            if theirs != ours {
                problems.push(format!(
                    "GETKEYS {:?}, ours {:?}",
                    theirs.iter().map(|k| String::from_utf8_lossy(k)).collect::<Vec<_>>(),
                    ours.iter().map(|k| String::from_utf8_lossy(k)).collect::<Vec<_>>()
                ));
            }
        }
        if !problems.is_empty() {
            failures.push(format!("{line}: {}", problems.join("; ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} invocations disagree:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Random argument vectors for every command, built from words the key procedures care
/// about: wherever `COMMAND GETKEYS` lists keys we list the same, wherever it refuses we
/// refuse too.
#[test]
fn key_indices_match_command_getkeys_on_random_arguments() {
    const WORDS: &[&[u8]] = &[
        b"0",
        b"1",
        b"2",
        b"3",
        b"-1",
        b"+1",
        b"02",
        b"2x",
        b" 1",
        b"",
        b"k",
        b"x",
        b"STORE",
        b"storedist",
        b"STREAMS",
        b"KEYS",
        b"LIMIT",
        b"GET",
        b"BY",
        b"COUNT",
        b"BLOCK",
        b"GROUP",
        b"NOACK",
        b"AUTH",
        b"AUTH2",
        b"COPY",
        b"WEIGHTS",
        b"LEFT",
        b"MIN",
    ];
    const PER_COMMAND: usize = 40;
    let server = RedisNode::start();
    let mut conn = connect(&server);
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let specs = COMMANDS
        .iter()
        .filter(|c| c.subcommands.is_empty())
        .chain(COMMANDS.iter().flat_map(|c| c.subcommands))
        // COMMAND GETKEYS COMMAND GETKEYS ... is not a question worth asking.
        .filter(|c| !c.name.starts_with("command"));
    let (mut cases, mut with_keys) = (0, 0);
    let mut failures = Vec::new();
    for spec in specs {
        let base = spec.arity.unsigned_abs() as usize;
        for _ in 0..PER_COMMAND {
            let len = (base.saturating_sub(1) + (next() % 8) as usize).max(1);
            let mut args: Vec<&[u8]> = spec.name.split('|').map(str::as_bytes).collect();
            while args.len() < len {
                args.push(WORDS[(next() % WORDS.len() as u64) as usize]);
            }
            if args.len() < 2 {
                continue; // COMMAND GETKEYS needs an argument after the name
            }
            let mut out = Vec::new();
            let result = key_indices(spec, &args, &mut out);
            let ours: Vec<&[u8]> = out.iter().map(|&i| args[i]).collect();

            let mut request: Vec<&[u8]> = vec![b"COMMAND", b"GETKEYS"];
            request.extend(&args);
            let (_, live) = conn.call_frame(&request);
            cases += 1;
            let agree = if live.is_error() {
                if live.text().contains("no key arguments") {
                    out.is_empty()
                } else {
                    result.is_err()
                }
            } else {
                let theirs: Vec<&[u8]> = live.children.iter().map(|c| c.data.as_slice()).collect();
                with_keys += usize::from(!theirs.is_empty());
                theirs == ours
            };
            if !agree {
                let show = |v: &[&[u8]]| {
                    v.iter()
                        .map(|a| String::from_utf8_lossy(a).into_owned())
                        .collect::<Vec<_>>()
                };
                failures.push(format!(
                    "{:?}: GETKEYS {} {:?}; ours {:?} {result:?}",
                    show(&args),
                    live.kind as char,
                    live.children
                        .iter()
                        .map(|c| String::from_utf8_lossy(&c.data).into_owned())
                        .collect::<Vec<_>>(),
                    show(&ours),
                ));
            }
        }
    }
    assert!(
        cases > 10_000 && with_keys > 2_000,
        "{cases} cases, {with_keys} with keys"
    );
    assert!(
        failures.is_empty(),
        "{} of {cases} random invocations disagree, e.g.:\n{}",
        failures.len(),
        failures[..failures.len().min(30)].join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// docs/commands.md is generated from the table and the routes: it must match the code.

#[test]
fn the_command_reference_matches_the_code() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/commands.md");
    let want = shardis::command::doc::markdown();
    if std::env::var_os("SHARDIS_BLESS").is_some() {
        std::fs::write(&path, &want).expect("write docs/commands.md");
        return;
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "docs/commands.md is stale: run `SHARDIS_BLESS=1 cargo test --test command_table` and commit it"
    );
}
