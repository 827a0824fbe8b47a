//! Merging the replies of a request that went to several shards into the one
//! reply the client expects, in its protocol.

mod agree;
mod pubsub;
pub mod scan;

pub use scan::{SCAN_SHARD_BITS, ScanWalk, split_scan_cursor};

use std::sync::Arc;

use bytes::Bytes;
use smallvec::SmallVec;

use crate::backend::BackendResult;
use crate::lock::glob::Namespace;
use crate::protocol::Encoder;
use crate::protocol::reply;

/// How to combine the parts of a fanned-out request.
#[derive(Debug)]
pub enum Merge {
    /// MGET: the part that holds key `i`, for every key in request order.
    /// Each part's keys keep their request order, so key `i`'s value is the
    /// next unread element of its part's array.
    Mget(MgetParts),
    /// Integer replies, summed (DEL, EXISTS, DBSIZE, ...).
    Sum,
    /// `+OK` from every part (MSET, FLUSHDB, ...).
    AllOk,
    /// Arrays concatenated (KEYS); lock keys, which every lock group member
    /// holds, listed once.
    Concat { lock_keys: Option<Namespace> },
    /// SCAN: the walk over the shards (see [`scan`]); one part, the last
    /// shard's reply.
    Scan(Box<ScanWalk>),
    /// A random non-null reply (RANDOMKEY); `start` is where to start looking.
    AnyNonNull { start: usize },
    /// Integer arrays combined with AND (SCRIPT EXISTS).
    AndArrays,
    /// The first part's reply, once all parts succeeded (SCRIPT LOAD, CONFIG GET).
    First,
    /// INFO: the proxy's own sections plus the shards', summed.
    Info(Box<crate::info::Info>),
    /// FUNCTION LOAD/DELETE/FLUSH/RESTORE, CONFIG SET/RESETSTAT/REWRITE:
    /// every shard gives the same reply, or the error names the shards that
    /// failed (`names`: the shards in part order; `what`: the command).
    Agree { what: &'static str, names: Vec<Arc<str>> },
    /// FUNCTION KILL, SCRIPT KILL: OK when any shard killed a script.
    AnyOk,
    /// FUNCTION LIST: libraries by name; one missing on some shard is an
    /// error naming it and the shards.
    FunctionList { names: Vec<Arc<str>> },
    /// FUNCTION STATS: the script running on any shard; the engines'
    /// library and function counts, which every shard must agree on, or
    /// an error names the shards and their counts.
    FunctionStats { names: Vec<Arc<str>> },
    /// PUBSUB SHARDCHANNELS: arrays joined, each element once.
    Union,
    /// PUBSUB SHARDNUMSUB: the part that holds channel `i`, for every
    /// channel in request order (two elements each).
    Pairs(MgetParts),
    /// SSUBSCRIBE / SUNSUBSCRIBE: the proxy's confirmation of each channel,
    /// sent once that channel's part (its shard's confirmation) succeeded.
    Confirm(Vec<Bytes>),
    /// EXEC with PUBLISH / SPUBLISH inside: the shard's EXEC array
    /// (`results`) with the PUBLISH replies (the parts) at `publish_at`.
    ExecPublish {
        results: Vec<Bytes>,
        publish_at: Vec<usize>,
    },
    /// CONFIG GET: the first reachable shard's answer with the proxy's own
    /// values (`own`) in place of the shards'.
    ConfigGet { own: Vec<(&'static str, String)> },
}

/// Part of each MGET key. Inline up to 16 keys: a typical MGET allocates
/// nothing for its merge table.
pub type MgetParts = SmallVec<[u16; 16]>;

/// An array of frames that are already encoded.
fn raw_array(enc: &mut Encoder<'_>, items: &[&Bytes]) {
    enc.array(items.len());
    items.iter().for_each(|v| enc.raw(v));
}

fn protocol_error(what: &str) -> String {
    format!("ERR shardis: unexpected reply from backend to {what}")
}

impl Merge {
    /// Writes the merged reply. Any part that failed makes the whole request
    /// fail with the first error, in part order.
    pub fn finish(self, parts: Vec<Option<BackendResult>>, enc: &mut Encoder<'_>) {
        // These look at every shard's outcome, failures included.
        let merge = match self {
            Merge::Agree { what, names } => return agree::agree(what, &names, parts, enc),
            Merge::AnyOk => return agree::any_ok(parts, enc),
            Merge::FunctionList { names } => return agree::function_list(&names, parts, enc),
            Merge::FunctionStats { names } => return agree::function_stats(&names, parts, enc),
            Merge::ConfigGet { own } => return agree::config_get(&own, parts, enc),
            // INFO is what operators run when something is wrong: a shard
            // that fails only drops out of the sums, and is counted.
            Merge::Info(info) => return info.finish(parts, enc),
            Merge::Scan(walk) => return walk.finish(parts.into_iter().next().flatten(), enc),
            Merge::Confirm(frames) => return pubsub::confirm(&frames, parts, enc),
            Merge::ExecPublish { results, publish_at } => {
                return pubsub::exec_with_publishes(&results, &publish_at, parts, enc);
            }
            other => other,
        };
        merge.finish_data(parts, enc)
    }

    fn finish_data(self, parts: Vec<Option<BackendResult>>, enc: &mut Encoder<'_>) {
        // Inline for up to 8 parts (shards): no allocation for a typical fan-out.
        let mut frames: SmallVec<[Bytes; 8]> = SmallVec::with_capacity(parts.len());
        for p in parts {
            match p {
                Some(Ok(f)) if reply::is_error(&f) && !matches!(self, Merge::Mget(_)) => return enc.raw(&f),
                Some(Ok(f)) => frames.push(f),
                Some(Err(e)) => return enc.error(&e.to_string()),
                None => return enc.error("ERR shardis: missing reply part"),
            }
        }
        match self {
            Merge::Mget(key_parts) => {
                if let Some(f) = frames.iter().find(|f| reply::is_error(f)) {
                    return enc.raw(f);
                }
                // Walk the parts' arrays side by side, one read position per
                // part, copying each value frame as it is: no per-element
                // allocation or reference count (merge_mget/10_keys_3_shards
                // in bench/micro.rs: 343 ns -> 187 ns).
                let mut pos: SmallVec<[usize; 8]> = SmallVec::with_capacity(frames.len());
                for f in &frames {
                    match reply::elements_start(f) {
                        Some(p) => pos.push(p),
                        None => return enc.error(&protocol_error("MGET")),
                    }
                }
                enc.array(key_parts.len());
                for &part in &key_parts {
                    let part = part as usize;
                    let (Some(f), Some(p)) = (frames.get(part), pos.get_mut(part)) else {
                        enc.null();
                        continue;
                    };
                    // A frame holds exactly one reply, so past the array's
                    // last element there is nothing and the key reads as null.
                    match f.get(*p..).and_then(reply::frame_len) {
                        Some(len) => {
                            enc.raw(&f[*p..*p + len]);
                            *p += len;
                        }
                        None => enc.null(),
                    }
                }
            }
            Merge::Sum => {
                let mut sum: i64 = 0;
                for f in &frames {
                    match reply::as_integer(f) {
                        Some(n) => sum = sum.saturating_add(n),
                        None => return enc.error(&protocol_error("a counting command")),
                    }
                }
                enc.integer(sum);
            }
            Merge::AllOk => match frames.iter().find(|f| !reply::is_ok(f)) {
                Some(f) => enc.raw(f),
                None => enc.ok(),
            },
            Merge::Concat { lock_keys } => {
                let Some(split): Option<Vec<Vec<Bytes>>> = frames.iter().map(reply::elements).collect() else {
                    return enc.error(&protocol_error("KEYS"));
                };
                let all = split.iter().flatten();
                match lock_keys {
                    None => {
                        enc.array(split.iter().map(Vec::len).sum());
                        all.for_each(|v| enc.raw(v));
                    }
                    Some(ns) => {
                        let mut seen = std::collections::HashSet::new();
                        let keep: Vec<&Bytes> = all
                            .filter(|v| match reply::as_bytes(v) {
                                Some(k) if ns.matches(&k) => seen.insert(k),
                                _ => true,
                            })
                            .collect();
                        raw_array(enc, &keep);
                    }
                }
            }
            Merge::AnyNonNull { start } => {
                let n = frames.len();
                match (0..n).map(|i| &frames[(start + i) % n]).find(|f| !reply::is_null(f)) {
                    Some(f) => enc.raw(f),
                    None => enc.null(),
                }
            }
            Merge::AndArrays => {
                let Some(split): Option<Vec<Vec<Bytes>>> = frames.iter().map(reply::elements).collect() else {
                    return enc.error(&protocol_error("SCRIPT EXISTS"));
                };
                let len = split.first().map_or(0, Vec::len);
                enc.array(len);
                for i in 0..len {
                    let all = split
                        .iter()
                        .all(|p| p.get(i).and_then(|f| reply::as_integer(f)) == Some(1));
                    enc.integer(all as i64);
                }
            }
            Merge::First => match frames.first() {
                Some(f) => enc.raw(f),
                None => enc.null(),
            },
            Merge::Union => pubsub::union(&frames, enc),
            Merge::Pairs(channel_parts) => pubsub::pairs(&channel_parts, &frames, enc),
            Merge::Info(_)
            | Merge::Scan(_)
            | Merge::Confirm(_)
            | Merge::ExecPublish { .. }
            | Merge::Agree { .. }
            | Merge::AnyOk
            | Merge::FunctionList { .. }
            | Merge::FunctionStats { .. }
            | Merge::ConfigGet { .. } => enc.error("ERR shardis: merge not handled"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{BackendError, BackendErrorKind};
    use crate::protocol::Protocol;
    use bytes::BytesMut;

    fn run(m: Merge, parts: &[&'static [u8]], proto: Protocol) -> Vec<u8> {
        let mut buf = BytesMut::new();
        let parts = parts.iter().map(|p| Some(Ok(Bytes::from_static(p)))).collect();
        m.finish(parts, &mut Encoder::new(&mut buf, proto));
        buf.to_vec()
    }

    #[test]
    fn mget_in_key_order() {
        let out = run(
            Merge::Mget(MgetParts::from_slice(&[1, 0, 1])),
            &[b"*1\r\n$1\r\na\r\n", b"*2\r\n$-1\r\n$1\r\nc\r\n"],
            Protocol::Resp2,
        );
        assert_eq!(out, b"*3\r\n$-1\r\n$1\r\na\r\n$1\r\nc\r\n");
        let out = run(
            Merge::Mget(MgetParts::from_slice(&[0])),
            &[b"*1\r\n_\r\n"],
            Protocol::Resp3,
        );
        assert_eq!(out, b"*1\r\n_\r\n");
        // A short array (never sent by Redis) reads as nulls; a non-array is an error.
        let out = run(
            Merge::Mget(MgetParts::from_slice(&[0, 0])),
            &[b"*1\r\n$1\r\na\r\n"],
            Protocol::Resp2,
        );
        assert_eq!(out, b"*2\r\n$1\r\na\r\n$-1\r\n");
        let out = run(Merge::Mget(MgetParts::from_slice(&[0])), &[b"+OK\r\n"], Protocol::Resp2);
        assert!(out.starts_with(b"-ERR shardis"));
    }

    #[test]
    fn sums_and_errors() {
        assert_eq!(run(Merge::Sum, &[b":2\r\n", b":3\r\n"], Protocol::Resp2), b":5\r\n");
        assert_eq!(
            run(Merge::Sum, &[b":2\r\n", b"-ERR x\r\n"], Protocol::Resp2),
            b"-ERR x\r\n"
        );
        let mut buf = BytesMut::new();
        let parts = vec![
            Some(Ok(Bytes::from_static(b"+OK\r\n"))),
            Some(Err(BackendError::new(
                BackendErrorKind::Unavailable,
                &"b".into(),
                "down",
            ))),
        ];
        Merge::AllOk.finish(parts, &mut Encoder::new(&mut buf, Protocol::Resp2));
        assert_eq!(&buf[..], b"-ERR backend b unavailable: down\r\n");
    }

    #[test]
    fn script_exists_and_keys() {
        let out = run(
            Merge::AndArrays,
            &[b"*2\r\n:1\r\n:1\r\n", b"*2\r\n:1\r\n:0\r\n"],
            Protocol::Resp2,
        );
        assert_eq!(out, b"*2\r\n:1\r\n:0\r\n");
        let out = run(
            Merge::Concat { lock_keys: None },
            &[b"*1\r\n$1\r\na\r\n", b"*0\r\n", b"*1\r\n$1\r\nb\r\n"],
            Protocol::Resp2,
        );
        assert_eq!(out, b"*2\r\n$1\r\na\r\n$1\r\nb\r\n");
    }

    #[test]
    fn lock_keys_are_listed_once() {
        let ns = Some(Namespace::new(&["lock:*"]));
        let out = run(
            Merge::Concat { lock_keys: ns.clone() },
            &[
                b"*2\r\n$6\r\nlock:a\r\n$1\r\nx\r\n",
                b"*1\r\n$6\r\nlock:a\r\n",
                b"*1\r\n$1\r\ny\r\n",
            ],
            Protocol::Resp2,
        );
        assert_eq!(out, b"*3\r\n$6\r\nlock:a\r\n$1\r\nx\r\n$1\r\ny\r\n");
    }
}
