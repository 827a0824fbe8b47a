//! The backend reply scanner on arbitrary bytes, whole and in chunks.
//!
//! Input: byte 0 picks the chunk sizes, the rest is what a backend sends.
//! Checks:
//! - never panics;
//! - the same frames, and an error or not, whether the bytes arrive in one
//!   read or in many;
//! - each frame, scanned alone, is one frame of the same length, and
//!   `was_push` says whether it starts with `>`;
//! - the readers the merges use (`elements`, `as_bytes`, `as_integer`,
//!   `elements_start`, ...) do not panic on any frame, and the elements of
//!   an aggregate are exactly the bytes after its header.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use shardis::protocol::reply::{self, ReplyScanner};

#[path = "common.rs"]
mod common;

/// The frames scanned from `chunks` in turn, and whether scanning ended in
/// an error (the connection is then dropped).
fn scan_all(chunks: &[&[u8]]) -> (Vec<Vec<u8>>, bool) {
    let mut sc = ReplyScanner::default();
    let mut buf = Vec::new();
    let mut out = Vec::new();
    for c in chunks {
        buf.extend_from_slice(c);
        loop {
            match sc.next_frame(&buf) {
                Ok(Some(n)) => {
                    let frame: Vec<u8> = buf.drain(..n).collect();
                    assert!(n > 0);
                    assert_eq!(sc.was_push(), frame[0] == b'>');
                    out.push(frame);
                }
                Ok(None) => break,
                Err(_) => return (out, true),
            }
        }
    }
    (out, false)
}

/// The readers on one frame, into nested aggregates up to `depth`.
fn read(frame: &Bytes, depth: usize) {
    assert_eq!(reply::frame_len(frame), Some(frame.len()), "a frame alone");
    let _ = reply::is_error(frame);
    let _ = reply::is_ok(frame);
    let _ = reply::is_null(frame);
    let _ = reply::as_integer(frame);
    let _ = reply::as_bytes(frame);
    if let Some(start) = reply::elements_start(frame) {
        assert!(start <= frame.len());
    }
    if let Some(els) = reply::elements(frame) {
        let header = frame.iter().position(|&b| b == b'\r').unwrap() + 2;
        let total: usize = els.iter().map(Bytes::len).sum();
        assert_eq!(header + total, frame.len(), "elements cover the aggregate");
        if depth > 0 {
            els.iter().for_each(|e| read(e, depth - 1));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [seed, input @ ..] = data else { return };
    let whole = scan_all(&[input]);
    let chunked = scan_all(&common::chunks(input, *seed));
    assert_eq!(whole, chunked, "whole vs chunked");
    for f in whole.0 {
        read(&Bytes::from(f), 8);
    }
});
