//! The merges of fanned-out replies (src/merge.rs, src/merge/*.rs, INFO's in
//! src/info.rs) on arbitrary backend replies, in RESP2 and RESP3.
//!
//! The input is structured (`arbitrary`): a merge with its request-side
//! data (MGET's key parts, SCAN's arguments and pages, INFO's sections ...)
//! and one part per shard: a reply, a failure or nothing. A reply is a frame
//! built from a value tree (arrays, maps, INFO text with numeric fields ...)
//! or raw bytes; either way it is one whole frame as the reply scanner
//! delimits it, which is what a backend connection hands the merges.
//! Checks: never panics, and what the client gets is well-formed: exactly
//! one frame (SSUBSCRIBE's confirmations: one per channel), nothing left
//! over, so a bad backend reply can never desynchronize the client.
#![no_main]

use std::sync::Arc;

use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use shardis::backend::{BackendError, BackendErrorKind, BackendResult};
use shardis::info::{Info, SECTIONS};
use shardis::lock::glob::Namespace;
use shardis::merge::{Merge, MgetParts, ScanWalk};
use shardis::protocol::reply::{self, ReplyScanner};
use shardis::protocol::{Encoder, Protocol, request::put_bulk};

/// INFO field names the merge treats specially, and a few ordinary ones.
const FIELDS: &[&str] = &[
    "used_memory",
    "used_memory_human",
    "rdb_last_save_time",
    "loading",
    "rdb_bgsave_in_progress",
    "mem_fragmentation_ratio",
    "instantaneous_ops_per_sec",
    "total_connections_received",
    "db0",
    "errorstat_ERR",
    "cmdstat_get",
    "latency_percentiles_usec_get",
    "maxclients",
    "timeout",
    "library_name",
];

/// Sub-fields of `a=1,b=2` values.
const SUBFIELDS: &[&str] = &["keys", "expires", "avg_ttl", "calls", "usec", "usec_per_call", "count", "p50"];

#[derive(Arbitrary, Debug)]
enum Value {
    /// Any bytes: the first frame in them, if there is one.
    Raw(Vec<u8>),
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    Verbatim(String),
    BlobError(Vec<u8>),
    Null,
    NullArray,
    Bool(bool),
    Double(f64),
    Array(Vec<Value>),
    Set(Vec<Value>),
    Push(Vec<Value>),
    Map(Vec<(Value, Value)>),
    /// An INFO answer: a bulk string of sections and fields.
    Info(Vec<InfoSection>),
    /// A SCAN page: `[cursor, [keys]]`.
    ScanPage(u64, Vec<Value>),
    /// A FUNCTION LIST entry in RESP2 (flat) or RESP3 (map) form.
    Library(bool, Name, Vec<(Name, Value)>),
}

#[derive(Arbitrary, Debug)]
enum Name {
    Known(u8),
    Other(String),
}

impl Name {
    fn text(&self) -> String {
        match self {
            Name::Known(i) => FIELDS[*i as usize % FIELDS.len()].to_string(),
            Name::Other(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct InfoSection {
    /// Index into SECTIONS (so the name is one the merge sums), or any name.
    name: Result<u8, String>,
    fields: Vec<(Name, Field)>,
}

#[derive(Arbitrary, Debug)]
enum Field {
    Int(i64),
    Float(f64),
    Text(String),
    Sub(Vec<(Result<u8, String>, SubValue)>),
}

#[derive(Arbitrary, Debug)]
enum SubValue {
    Int(i128),
    Float(f64),
    Text(String),
}

/// A one-line string: CR and LF would end the frame early.
fn line(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

fn info_text(sections: &[InfoSection]) -> String {
    let mut t = String::new();
    for s in sections {
        let name = match &s.name {
            Ok(i) => SECTIONS[*i as usize % SECTIONS.len()].to_string(),
            Err(n) => n.clone(),
        };
        t.push_str(&format!("# {name}\r\n"));
        for (k, v) in &s.fields {
            let v = match v {
                Field::Int(n) => n.to_string(),
                Field::Float(x) => x.to_string(),
                Field::Text(s) => s.clone(),
                Field::Sub(subs) => subs
                    .iter()
                    .map(|(k, v)| {
                        let k = match k {
                            Ok(i) => SUBFIELDS[*i as usize % SUBFIELDS.len()].to_string(),
                            Err(s) => s.clone(),
                        };
                        let v = match v {
                            SubValue::Int(n) => n.to_string(),
                            SubValue::Float(x) => x.to_string(),
                            SubValue::Text(s) => s.clone(),
                        };
                        format!("{k}={v}")
                    })
                    .collect::<Vec<_>>()
                    .join(","),
            };
            t.push_str(&format!("{}:{v}\r\n", k.text()));
        }
        t.push_str("\r\n");
    }
    t
}

fn header(out: &mut BytesMut, prefix: u8, n: usize) {
    out.extend_from_slice(format!("{}{n}\r\n", prefix as char).as_bytes());
}

fn encode(v: &Value, out: &mut BytesMut) {
    match v {
        Value::Raw(b) => match reply::frame_len(b) {
            Some(n) => out.extend_from_slice(&b[..n]),
            None => put_bulk(out, b),
        },
        Value::Simple(s) => out.extend_from_slice(format!("+{}\r\n", line(s)).as_bytes()),
        Value::Error(s) => out.extend_from_slice(format!("-{}\r\n", line(s)).as_bytes()),
        Value::Int(n) => out.extend_from_slice(format!(":{n}\r\n").as_bytes()),
        Value::Bulk(b) => put_bulk(out, b),
        Value::Verbatim(s) => {
            header(out, b'=', s.len() + 4);
            out.extend_from_slice(b"txt:");
            out.extend_from_slice(s.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Value::BlobError(b) => {
            header(out, b'!', b.len());
            out.extend_from_slice(b);
            out.extend_from_slice(b"\r\n");
        }
        Value::Null => out.extend_from_slice(b"_\r\n"),
        Value::NullArray => out.extend_from_slice(b"*-1\r\n"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"#t\r\n" } else { b"#f\r\n" }),
        Value::Double(x) => out.extend_from_slice(format!(",{x}\r\n").as_bytes()),
        Value::Array(vs) | Value::Set(vs) | Value::Push(vs) => {
            let p = match v {
                Value::Array(_) => b'*',
                Value::Set(_) => b'~',
                _ => b'>',
            };
            header(out, p, vs.len());
            vs.iter().for_each(|v| encode(v, out));
        }
        Value::Map(kvs) => {
            header(out, b'%', kvs.len());
            for (k, v) in kvs {
                encode(k, out);
                encode(v, out);
            }
        }
        Value::Info(sections) => put_bulk(out, info_text(sections).as_bytes()),
        Value::ScanPage(cursor, keys) => {
            header(out, b'*', 2);
            put_bulk(out, cursor.to_string().as_bytes());
            header(out, b'*', keys.len());
            keys.iter().for_each(|v| encode(v, out));
        }
        Value::Library(resp3, name, fields) => {
            if *resp3 {
                header(out, b'%', fields.len() + 1);
            } else {
                header(out, b'*', 2 * (fields.len() + 1));
            }
            put_bulk(out, b"library_name");
            put_bulk(out, name.text().as_bytes());
            for (k, v) in fields {
                put_bulk(out, k.text().as_bytes());
                encode(v, out);
            }
        }
    }
}

/// One whole frame, as a backend connection hands it over.
fn frame(v: &Value) -> Bytes {
    let mut out = BytesMut::new();
    encode(v, &mut out);
    assert_eq!(reply::frame_len(&out), Some(out.len()), "the target built a bad frame");
    out.freeze()
}

#[derive(Arbitrary, Debug)]
enum Part {
    Reply(Value),
    Failed(u8, String),
    Missing,
}

impl Part {
    fn result(&self) -> Option<BackendResult> {
        match self {
            Part::Reply(v) => Some(Ok(frame(v))),
            Part::Failed(k, detail) => {
                let kind = [
                    BackendErrorKind::Unavailable,
                    BackendErrorKind::Timeout,
                    BackendErrorKind::ConnectionLost,
                    BackendErrorKind::Protocol,
                    BackendErrorKind::ShuttingDown,
                    BackendErrorKind::Excluded,
                ][*k as usize % 6];
                Some(Err(BackendError::new(kind, &Arc::from("s"), detail.clone())))
            }
            Part::Missing => None,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Kind {
    Mget(Vec<u8>),
    Sum,
    AllOk,
    Concat(Option<Vec<String>>),
    Scan {
        args: Vec<Vec<u8>>,
        shard: u16,
        shards: u16,
        lock_keys: Option<(Vec<String>, Option<u16>)>,
        /// Pages taken before the last one (the parts'), and whether the
        /// walk may go on into the next shard.
        pages: Vec<(Value, bool)>,
    },
    AnyNonNull(u16),
    AndArrays,
    First,
    Info {
        sections: u16,
        own: Vec<(u8, String)>,
        fields: Vec<(u8, u8, String)>,
    },
    Agree,
    AnyOk,
    FunctionList,
    FunctionStats,
    Union,
    Pairs(Vec<u8>),
    Confirm(Vec<Value>),
    ExecPublish {
        results: Vec<Value>,
        publish_at: Vec<u8>,
    },
    ConfigGet(Vec<(bool, String)>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    resp3: bool,
    kind: Kind,
    /// Shard names, for the merges' error messages (may be fewer than parts).
    names: Vec<String>,
    parts: Vec<Part>,
}

/// MGET's (PUBSUB SHARDNUMSUB's) part of each key: mostly real parts,
/// sometimes one past the last.
fn part_of(ps: &[u8], nparts: usize) -> MgetParts {
    ps.iter().map(|&p| (p as usize % (nparts + 1)) as u16).collect()
}

fn merge(kind: &Kind, names: Vec<Arc<str>>, nparts: usize) -> Merge {
    match kind {
        Kind::Mget(ps) => Merge::Mget(part_of(ps, nparts)),
        Kind::Sum => Merge::Sum,
        Kind::AllOk => Merge::AllOk,
        Kind::Concat(ns) => Merge::Concat {
            lock_keys: ns.as_ref().map(|p| Namespace::new(p.as_slice())),
        },
        Kind::Scan {
            args,
            shard,
            shards,
            lock_keys,
            pages,
        } => {
            let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
            let lock_keys = lock_keys
                .as_ref()
                .map(|(p, r)| (Namespace::new(p.as_slice()), r.map(usize::from)));
            let mut walk = ScanWalk::new(&args, usize::from(*shard), usize::from(*shards), lock_keys);
            for (page, may_continue) in pages {
                let _ = walk.request(0);
                if walk.take(&frame(page), *may_continue).is_none() {
                    break;
                }
            }
            Merge::Scan(Box::new(walk))
        }
        Kind::AnyNonNull(start) => Merge::AnyNonNull {
            start: usize::from(*start),
        },
        Kind::AndArrays => Merge::AndArrays,
        Kind::First => Merge::First,
        Kind::Info { sections, own, fields } => {
            let pick = |i: u8| SECTIONS[i as usize % SECTIONS.len()];
            let wanted = (0..SECTIONS.len())
                .filter(|i| (sections >> i) & 1 == 1)
                .map(|i| SECTIONS[i])
                .collect();
            let own = own.iter().map(|(s, t)| (pick(*s), t.clone())).collect();
            let fields = fields
                .iter()
                .map(|(s, f, v)| (pick(*s), FIELDS[*f as usize % FIELDS.len()], v.clone()))
                .collect();
            Merge::Info(Box::new(Info::new(wanted, own, fields, names)))
        }
        Kind::Agree => Merge::Agree {
            what: "FUNCTION LOAD",
            names,
        },
        Kind::AnyOk => Merge::AnyOk,
        Kind::FunctionList => Merge::FunctionList { names },
        Kind::FunctionStats => Merge::FunctionStats { names },
        Kind::Union => Merge::Union,
        Kind::Pairs(ps) => Merge::Pairs(part_of(ps, nparts)),
        Kind::Confirm(frames) => Merge::Confirm(frames.iter().map(frame).collect()),
        Kind::ExecPublish { results, publish_at } => {
            let mut publish_at: Vec<usize> = publish_at.iter().map(|&i| usize::from(i)).collect();
            publish_at.sort_unstable();
            Merge::ExecPublish {
                results: results.iter().map(frame).collect(),
                publish_at,
            }
        }
        Kind::ConfigGet(own) => Merge::ConfigGet {
            own: own
                .iter()
                .map(|(t, v)| (if *t { "maxclients" } else { "timeout" }, v.clone()))
                .collect(),
        },
    }
}

fuzz_target!(|input: Input| {
    let names: Vec<Arc<str>> = input.names.iter().map(|n| Arc::from(n.as_str())).collect();
    let parts: Vec<Option<BackendResult>> = input.parts.iter().map(Part::result).collect();
    let expect = match &input.kind {
        Kind::Confirm(frames) => frames.len().min(parts.len()),
        _ => 1,
    };
    let merge = merge(&input.kind, names, parts.len());
    let mut buf = BytesMut::new();
    let proto = if input.resp3 { Protocol::Resp3 } else { Protocol::Resp2 };
    merge.finish(parts, &mut Encoder::new(&mut buf, proto));
    // What the client reads: `expect` whole frames, nothing else.
    let mut sc = ReplyScanner::default();
    let mut at = 0;
    for i in 0..expect {
        match sc.next_frame(&buf[at..]) {
            Ok(Some(n)) => at += n,
            other => panic!("reply frame {i} of {expect}: {other:?} in {:?}", Bytes::copy_from_slice(&buf)),
        }
    }
    assert_eq!(at, buf.len(), "bytes after the reply: {:?}", Bytes::copy_from_slice(&buf));
});
