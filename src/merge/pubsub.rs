//! Merging pub/sub replies: PUBSUB SHARDCHANNELS (a union over shards),
//! PUBSUB SHARDNUMSUB (pairs in request order), SSUBSCRIBE / SUNSUBSCRIBE
//! confirmations, and EXEC's reply with the PUBLISH replies put in.

use std::collections::HashSet;

use bytes::Bytes;

use super::{MgetParts, protocol_error};
use crate::backend::BackendResult;
use crate::protocol::Encoder;
use crate::protocol::reply;

/// PUBSUB SHARDCHANNELS: every shard's channels, each once.
pub(super) fn union(frames: &[Bytes], enc: &mut Encoder<'_>) {
    let Some(split): Option<Vec<Vec<Bytes>>> = frames.iter().map(reply::elements).collect() else {
        return enc.error(&protocol_error("PUBSUB SHARDCHANNELS"));
    };
    let mut seen = HashSet::new();
    let keep: Vec<&Bytes> = split.iter().flatten().filter(|f| seen.insert(&f[..])).collect();
    enc.array(keep.len());
    keep.iter().for_each(|f| enc.raw(f));
}

/// PUBSUB SHARDNUMSUB: channel `i`'s pair (name, count) is the next pair of
/// its part's array.
pub(super) fn pairs(channel_parts: &MgetParts, frames: &[Bytes], enc: &mut Encoder<'_>) {
    let Some(split): Option<Vec<Vec<Bytes>>> = frames.iter().map(reply::elements).collect() else {
        return enc.error(&protocol_error("PUBSUB SHARDNUMSUB"));
    };
    let mut pos = vec![0usize; split.len()];
    enc.array(channel_parts.len() * 2);
    for &p in channel_parts {
        let p = p as usize;
        let at = pos.get(p).copied().unwrap_or(0);
        match split.get(p).and_then(|els| els.get(at..at + 2)) {
            Some(pair) => {
                enc.raw(&pair[0]);
                enc.raw(&pair[1]);
                pos[p] += 2;
            }
            None => {
                enc.null();
                enc.integer(0);
            }
        }
    }
}

/// SSUBSCRIBE / SUNSUBSCRIBE: part `i` is channel `i`'s backend
/// confirmation; the client gets the proxy's confirmation `frames[i]` (its
/// count is the client's, over every shard), or the part's error.
pub(super) fn confirm(frames: &[Bytes], parts: Vec<Option<BackendResult>>, enc: &mut Encoder<'_>) {
    for (mine, part) in frames.iter().zip(parts) {
        match part {
            Some(Ok(f)) if reply::is_error(&f) => enc.raw(&f),
            Some(Ok(_)) => enc.raw(mine),
            Some(Err(e)) => enc.error(&e.to_string()),
            None => enc.error("ERR shardis: missing reply part"),
        }
    }
}

/// EXEC with PUBLISH inside: `results` is the shard's EXEC array (the other
/// commands' replies), the parts are the PUBLISH replies, which go at the
/// positions `publish_at` (ascending) of the reply array.
pub(super) fn exec_with_publishes(
    results: &[Bytes],
    publish_at: &[usize],
    parts: Vec<Option<BackendResult>>,
    enc: &mut Encoder<'_>,
) {
    let total = results.len() + parts.len();
    enc.array(total);
    let (mut results, mut parts) = (results.iter(), parts.into_iter());
    for i in 0..total {
        if publish_at.contains(&i) {
            match parts.next().flatten() {
                Some(Ok(f)) => enc.raw(&f),
                Some(Err(e)) => enc.error(&e.to_string()),
                None => enc.error("ERR shardis: missing reply part"),
            }
        } else {
            match results.next() {
                Some(f) => enc.raw(f),
                None => enc.null(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{BackendError, BackendErrorKind};
    use crate::protocol::Protocol;
    use bytes::BytesMut;

    fn out(f: impl FnOnce(&mut Encoder<'_>)) -> String {
        let mut buf = BytesMut::new();
        f(&mut Encoder::new(&mut buf, Protocol::Resp2));
        String::from_utf8(buf.to_vec()).unwrap()
    }

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn shardchannels_is_a_union_and_shardnumsub_keeps_request_order() {
        let frames = [b("*2\r\n$1\r\na\r\n$1\r\nb\r\n"), b("*0\r\n"), b("*1\r\n$1\r\na\r\n")];
        assert_eq!(out(|e| union(&frames, e)), "*2\r\n$1\r\na\r\n$1\r\nb\r\n");
        assert!(out(|e| union(&[b(":1\r\n")], e)).starts_with("-ERR shardis"));
        // Channels x (part 1), y (part 0), z (part 1).
        let frames = [
            b("*2\r\n$1\r\ny\r\n:2\r\n"),
            b("*4\r\n$1\r\nx\r\n:1\r\n$1\r\nz\r\n:0\r\n"),
        ];
        assert_eq!(
            out(|e| pairs(&MgetParts::from_slice(&[1, 0, 1]), &frames, e)),
            "*6\r\n$1\r\nx\r\n:1\r\n$1\r\ny\r\n:2\r\n$1\r\nz\r\n:0\r\n"
        );
    }

    #[test]
    fn confirmations_are_the_proxys_and_publish_replies_go_in_place() {
        let mine = [
            b("*3\r\n$10\r\nssubscribe\r\n$1\r\na\r\n:1\r\n"),
            b("*3\r\n$10\r\nssubscribe\r\n$1\r\nb\r\n:2\r\n"),
        ];
        let parts = vec![
            Some(Ok(b("*3\r\n$10\r\nssubscribe\r\n$1\r\na\r\n:1\r\n"))),
            Some(Err(BackendError::new(
                BackendErrorKind::Unavailable,
                &"s".into(),
                "down",
            ))),
        ];
        assert_eq!(
            out(|e| confirm(&mine, parts, e)),
            "*3\r\n$10\r\nssubscribe\r\n$1\r\na\r\n:1\r\n-ERR backend s unavailable: down\r\n"
        );
        // MULTI; SET; PUBLISH; INCR; PUBLISH; EXEC.
        let results = [b("+OK\r\n"), b(":1\r\n")];
        let parts = vec![Some(Ok(b(":3\r\n"))), Some(Ok(b(":0\r\n")))];
        assert_eq!(
            out(|e| exec_with_publishes(&results, &[1, 3], parts, e)),
            "*4\r\n+OK\r\n:3\r\n:1\r\n:0\r\n"
        );
        // Only PUBLISH queued: the shard's EXEC answered an empty array.
        let parts = vec![Some(Ok(b(":1\r\n")))];
        assert_eq!(out(|e| exec_with_publishes(&[], &[0], parts, e)), "*1\r\n:1\r\n");
    }
}
