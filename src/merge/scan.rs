//! SCAN's walk over the shards (pure): which shard the proxy's cursor names,
//! what each shard's page adds, when to go on into the next shard within
//! the same call, and the proxy cursor the client gets back.
//!
//! The proxy cursor keeps the shard's index in its low [`SCAN_SHARD_BITS`]
//! bits and the shard's own cursor above them. A call starts on the shard
//! the cursor names; when that shard's iteration ends (backend cursor 0)
//! before COUNT keys were found, the same call goes on with `SCAN 0` on the
//! next shard, and so on, so a small keyspace comes back whole in one call
//! with cursor 0, as from one Redis. Every shard is still walked from 0 to 0
//! by its own SCAN, in shard order, so a key present for the whole iteration
//! is returned (and, as on one Redis, a key is never returned by two shards:
//! each lives on one).

use bytes::Bytes;

use crate::lock::glob::Namespace;
use crate::protocol::Encoder;
use crate::protocol::reply;
use crate::protocol::request::Request;

/// Bits of a SCAN cursor that name the shard; the backend cursor is shifted
/// above them. 12 bits = up to 4096 shards, the configuration's maximum.
pub const SCAN_SHARD_BITS: u32 = 12;

/// Splits a proxy SCAN cursor into (shard, backend cursor).
pub fn split_scan_cursor(cursor: u64) -> (usize, u64) {
    (
        (cursor & ((1 << SCAN_SHARD_BITS) - 1)) as usize,
        cursor >> SCAN_SHARD_BITS,
    )
}

/// Redis's default SCAN COUNT.
const DEFAULT_COUNT: usize = 10;

/// One client SCAN call in progress.
#[derive(Debug)]
pub struct ScanWalk {
    /// The shard asked last.
    pub shard: usize,
    /// Shards in the topology the call was routed under.
    pub shards: usize,
    /// Lock keys (on every lock group member) are listed only by this
    /// shard; `None`: locks are off.
    pub lock_keys: Option<(Namespace, Option<usize>)>,
    /// The client's arguments; argument 1 (the cursor) is replaced for each
    /// shard.
    args: Vec<Bytes>,
    /// The client's COUNT (10 if none): go on into the next shard while
    /// fewer keys than this were found.
    count: usize,
    /// Key frames found so far, as the shards encoded them.
    found: Vec<Bytes>,
    /// The cursor to answer, once the walk is over.
    next: Option<u64>,
    /// A reply that could not be understood, or a cursor too large.
    error: Option<&'static str>,
}

impl ScanWalk {
    /// A walk for `args` (the client's SCAN) starting on `shard` of
    /// `shards`.
    pub fn new(args: &[&[u8]], shard: usize, shards: usize, lock_keys: Option<(Namespace, Option<usize>)>) -> ScanWalk {
        let count = args
            .iter()
            .position(|a| a.eq_ignore_ascii_case(b"count"))
            .and_then(|i| args.get(i + 1))
            .and_then(|c| std::str::from_utf8(c).ok()?.parse::<usize>().ok())
            .unwrap_or(DEFAULT_COUNT);
        ScanWalk {
            shard,
            shards,
            lock_keys,
            args: args.iter().map(|a| Bytes::copy_from_slice(a)).collect(),
            count,
            found: Vec::new(),
            next: None,
            error: None,
        }
    }

    /// The request for the current shard with the backend cursor `cursor`.
    pub fn request(&self, cursor: u64) -> Bytes {
        let mut buf = itoa::Buffer::new();
        let mut args: Vec<&[u8]> = self.args.iter().map(|a| &a[..]).collect();
        if let Some(c) = args.get_mut(1) {
            *c = buf.format(cursor).as_bytes();
        }
        Request::from_args(&args).raw
    }

    /// Takes the current shard's page (a non-error reply). Returns the
    /// shard and request to send next when the call goes on into the next
    /// shard (only when `may_continue`); `None` when the walk is over.
    pub fn take(&mut self, frame: &Bytes, may_continue: bool) -> Option<(usize, Bytes)> {
        let parsed = reply::elements(frame).and_then(|el| {
            let cursor = std::str::from_utf8(&reply::as_bytes(el.first()?)?)
                .ok()?
                .parse::<u64>()
                .ok()?;
            Some((cursor, reply::elements(el.get(1)?)?))
        });
        let Some((cursor, keys)) = parsed else {
            self.error = Some("ERR shardis: unexpected reply from backend to SCAN");
            return None;
        };
        let drop_lock_keys = match &self.lock_keys {
            Some((ns, reporter)) if *reporter != Some(self.shard) => Some(ns),
            _ => None,
        };
        self.found.extend(
            keys.into_iter()
                .filter(|k| drop_lock_keys.is_none_or(|ns| reply::as_bytes(k).is_none_or(|k| !ns.matches(&k)))),
        );
        if cursor != 0 {
            if cursor >> (64 - SCAN_SHARD_BITS) != 0 {
                self.error = Some("ERR shardis: backend SCAN cursor too large to combine with a shard number");
            } else {
                self.next = Some((cursor << SCAN_SHARD_BITS) | self.shard as u64);
            }
            return None;
        }
        if self.shard + 1 >= self.shards {
            self.next = Some(0);
            return None;
        }
        if may_continue && self.found.len() < self.count {
            self.shard += 1;
            return Some((self.shard, self.request(0)));
        }
        self.next = Some((self.shard + 1) as u64);
        None
    }

    /// Writes the reply: the shard's failure, or `[cursor, keys]`.
    pub fn finish(mut self, last: Option<crate::backend::BackendResult>, enc: &mut Encoder<'_>) {
        match last {
            Some(Ok(f)) if reply::is_error(&f) => return enc.raw(&f),
            Some(Ok(f)) if self.next.is_none() && self.error.is_none() => {
                self.take(&f, false);
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return enc.error(&e.to_string()),
            None => return enc.error("ERR shardis: missing reply part"),
        }
        if let Some(e) = self.error {
            return enc.error(e);
        }
        enc.array(2);
        enc.bulk(itoa::Buffer::new().format(self.next.unwrap_or(0)).as_bytes());
        enc.array(self.found.len());
        self.found.iter().for_each(|k| enc.raw(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Protocol;
    use bytes::BytesMut;

    fn walk(args: &str, shard: usize, lock_keys: Option<(Namespace, Option<usize>)>) -> ScanWalk {
        let args: Vec<&[u8]> = args.split(' ').map(str::as_bytes).collect();
        ScanWalk::new(&args, shard, 3, lock_keys)
    }

    fn page(cursor: u64, keys: &[&str]) -> Bytes {
        let mut s = format!("*2\r\n${}\r\n{cursor}\r\n*{}\r\n", cursor.to_string().len(), keys.len());
        for k in keys {
            s.push_str(&format!("${}\r\n{k}\r\n", k.len()));
        }
        Bytes::from(s)
    }

    fn done(w: ScanWalk) -> String {
        let mut buf = BytesMut::new();
        w.finish(
            Some(Ok(Bytes::from_static(b"+unused\r\n"))),
            &mut Encoder::new(&mut buf, Protocol::Resp2),
        );
        String::from_utf8(buf.to_vec()).unwrap()
    }

    #[test]
    fn a_small_keyspace_comes_back_in_one_call() {
        let mut w = walk("SCAN 0", 0, None);
        let next = w.take(&page(0, &["a", "b"]), true);
        assert_eq!(next, Some((1, Request::from_args(&["SCAN", "0"]).raw)));
        assert_eq!(w.take(&page(0, &[]), true).map(|n| n.0), Some(2));
        assert_eq!(w.take(&page(0, &["c"]), true), None);
        assert_eq!(done(w), "*2\r\n$1\r\n0\r\n*3\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n");
    }

    #[test]
    fn count_reached_or_a_shard_not_done_ends_the_call() {
        // COUNT 2 reached at the end of shard 0: the cursor names shard 1.
        let mut w = walk("SCAN 0 MATCH k* COUNT 2", 0, None);
        assert_eq!(w.take(&page(0, &["k1", "k2"]), true), None);
        assert_eq!(done(w), "*2\r\n$1\r\n1\r\n*2\r\n$2\r\nk1\r\n$2\r\nk2\r\n");
        // A shard that is not done: its cursor, shifted, with the shard.
        let mut w = walk("SCAN 1 COUNT 100 TYPE string", 1, None);
        assert_eq!(w.take(&page(7, &["x"]), true), None);
        let c = (7u64 << SCAN_SHARD_BITS) | 1;
        assert_eq!(split_scan_cursor(c), (1, 7));
        assert_eq!(
            done(w),
            format!("*2\r\n${}\r\n{c}\r\n*1\r\n$1\r\nx\r\n", c.to_string().len())
        );
        // The arguments after the cursor go to every shard as they came.
        let mut w = walk("SCAN 0 MATCH k* TYPE hash", 0, None);
        let (_, req) = w.take(&page(0, &[]), true).expect("next shard");
        assert_eq!(
            req,
            Request::from_args(&["SCAN", "0", "MATCH", "k*", "TYPE", "hash"]).raw
        );
        // Without leave to go on (a reply taken at the end) the cursor names the next shard.
        let mut w = walk("SCAN 0", 0, None);
        assert_eq!(w.take(&page(0, &[]), false), None);
        assert_eq!(done(w), "*2\r\n$1\r\n1\r\n*0\r\n");
    }

    #[test]
    fn lock_keys_only_from_their_reporter_and_errors_pass_through() {
        let ns = Namespace::new(&["lock:*"]);
        let mut w = walk("SCAN 0", 0, Some((ns, Some(1))));
        assert!(w.take(&page(0, &["lock:a", "z"]), true).is_some());
        assert!(w.take(&page(0, &["lock:a", "y"]), true).is_some());
        assert_eq!(w.take(&page(0, &["lock:a"]), true), None);
        assert_eq!(done(w), "*2\r\n$1\r\n0\r\n*3\r\n$1\r\nz\r\n$6\r\nlock:a\r\n$1\r\ny\r\n");
        let mut w = walk("SCAN 0", 0, None);
        assert_eq!(w.take(&Bytes::from_static(b"+OK\r\n"), true), None);
        assert!(done(w).starts_with("-ERR shardis: unexpected reply"));
        let mut buf = BytesMut::new();
        walk("SCAN 0", 0, None).finish(
            Some(Ok(Bytes::from_static(b"-ERR x\r\n"))),
            &mut Encoder::new(&mut buf, Protocol::Resp2),
        );
        assert_eq!(&buf[..], b"-ERR x\r\n");
    }
}
