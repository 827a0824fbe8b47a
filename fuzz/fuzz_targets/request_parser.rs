//! The client request parser on arbitrary bytes, whole and in chunks.
//!
//! Input: byte 0 picks the limits (small, so every limit is reached),
//! byte 1 the chunk sizes, the rest is what a client sends. Checks:
//! - never panics (libFuzzer reports it);
//! - the same requests, and an error or not, whether the bytes arrive in
//!   one read or in many (what the property test in
//!   src/protocol/request/tests.rs checks for valid input);
//! - each request's `raw` (what goes to a backend) parses alone, under
//!   Redis's own limits, to the same arguments, with nothing left over;
//! - no request is empty or has more arguments than `max_args`.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use shardis::protocol::{Limits, Request, RequestParser};

#[path = "common.rs"]
mod common;

type Args = Vec<Vec<u8>>;

fn limits(b: u8) -> Limits {
    Limits {
        max_bulk: [0, 3, 16, 300][(b & 3) as usize],
        max_args: [1, 2, 5, 100][(b >> 2 & 3) as usize],
        max_inline: [1, 8, 40, 300][(b >> 4 & 3) as usize],
        max_request: [10, 40, 200, 4096][(b >> 6) as usize],
    }
}

/// Every request parsed from `chunks` in turn, and whether parsing ended in
/// an error (it stops there, as the session closes the connection).
fn parse_all(limits: Limits, chunks: &[&[u8]]) -> (Vec<Args>, bool) {
    let mut p = RequestParser::new(limits);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for c in chunks {
        buf.extend_from_slice(c);
        loop {
            match p.parse(&mut buf) {
                Ok(Some(r)) => {
                    check(&r, &limits);
                    out.push(r.args().map(<[u8]>::to_vec).collect());
                }
                Ok(None) => break,
                Err(_) => return (out, true),
            }
        }
    }
    (out, false)
}

fn check(r: &Request, limits: &Limits) {
    assert!(!r.is_empty() && r.len() <= limits.max_args, "{} arguments", r.len());
    let mut again = RequestParser::new(Limits::default());
    let mut buf = BytesMut::from(&r.raw[..]);
    let back = again.parse(&mut buf).expect("raw parses").expect("raw is complete");
    assert!(buf.is_empty(), "raw holds more than one request");
    assert!(back.args().eq(r.args()), "raw carries other arguments");
}

fuzz_target!(|data: &[u8]| {
    let [l, seed, input @ ..] = data else { return };
    let limits = limits(*l);
    let whole = parse_all(limits, &[input]);
    let chunked = parse_all(limits, &common::chunks(input, *seed));
    assert_eq!(whole, chunked, "whole vs chunked");
});
