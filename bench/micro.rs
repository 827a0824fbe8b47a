//! Micro-benchmarks of the hot functions on a request's path:
//! request parsing, key → shard lookup (hash included), command-table lookup
//! and MGET reply merging.
//!
//! Run: `cargo bench --bench micro` (add `-- --quick` for a short smoke run,
//! or a filter such as `-- ring`).

use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use shardis::backend::BackendResult;
use shardis::merge::{Merge, MgetParts};
use shardis::protocol::{Encoder, Limits, Protocol, RequestParser};
use shardis::ring::Ring;
use shardis::testkit::members;

/// RESP multibulk encoding of `args`.
fn resp(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn mget_args(n: usize) -> Vec<Vec<u8>> {
    let mut v = vec![b"MGET".to_vec()];
    v.extend((0..n).map(|i| format!("key:{i:06}").into_bytes()));
    v
}

fn parsing(c: &mut Criterion) {
    let v64 = vec![b'x'; 64];
    let v16k = vec![b'x'; 16 * 1024];
    let mget = mget_args(100);
    let mget_refs: Vec<&[u8]> = mget.iter().map(|a| a.as_slice()).collect();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("get", resp(&[b"GET", b"key:000123"])),
        ("set_64B", resp(&[b"SET", b"key:000123", &v64])),
        ("set_16KiB", resp(&[b"SET", b"key:000123", &v16k])),
        ("mget_100", resp(&mget_refs)),
    ];
    let mut g = c.benchmark_group("parse");
    for (name, input) in &cases {
        g.throughput(Throughput::Bytes(input.len() as u64));
        // The buffer is refilled outside the timed part; the parse splits the
        // request off the buffer as the session does.
        g.bench_function(*name, |b| {
            let mut parser = RequestParser::new(Limits::default());
            b.iter_batched_ref(
                || BytesMut::from(&input[..]),
                |buf| {
                    let req = parser.parse(buf).unwrap().unwrap();
                    black_box(req);
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn ring(c: &mut Criterion) {
    // 4096 distinct keys, looked up round-robin: realistic key lengths, and the
    // table is touched at random places as it is under load.
    let keys: Vec<Vec<u8>> = (0..4096).map(|i| format!("key:{i}").into_bytes()).collect();
    let mut g = c.benchmark_group("ring_shard_of");
    for n in [10usize, 100, 1000] {
        let ring = Ring::build(&members(n), 18);
        g.bench_function(format!("{n}_shards"), |b| {
            let mut i = 0usize;
            b.iter(|| {
                i = (i + 1) & 4095;
                black_box(ring.shard_of(black_box(&keys[i])))
            })
        });
    }
    g.finish();
}

fn command_lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("command_lookup");
    let get: [&[u8]; 2] = [b"GET", b"key:1"];
    let set: [&[u8]; 3] = [b"set", b"key:1", b"value"];
    let mget = mget_args(10);
    let mget: Vec<&[u8]> = mget.iter().map(|a| a.as_slice()).collect();
    let client: [&[u8]; 3] = [b"CLIENT", b"SETNAME", b"bench"];
    let zadd: [&[u8]; 4] = [b"ZADD", b"z", b"1", b"m"];
    g.bench_function("get", |b| {
        b.iter(|| black_box(shardis::command::lookup(black_box(&get[..])).is_ok()))
    });
    g.bench_function("set_lowercase", |b| {
        b.iter(|| black_box(shardis::command::lookup(black_box(&set[..])).is_ok()))
    });
    g.bench_function("mget_10", |b| {
        b.iter(|| black_box(shardis::command::lookup(black_box(&mget[..])).is_ok()))
    });
    g.bench_function("zadd", |b| {
        b.iter(|| black_box(shardis::command::lookup(black_box(&zadd[..])).is_ok()))
    });
    g.bench_function("client_setname", |b| {
        b.iter(|| black_box(shardis::command::lookup(black_box(&client[..])).is_ok()))
    });
    g.finish();
}

/// An MGET of `keys` keys spread round-robin over `shards` shards: the
/// per-shard array replies and the merge table (the part of each key).
fn mget_parts(keys: usize, shards: usize, value: &[u8]) -> (MgetParts, Vec<Bytes>) {
    let mut slots = MgetParts::with_capacity(keys);
    let mut counts = vec![0u32; shards];
    for k in 0..keys {
        let s = k % shards;
        slots.push(s as u16);
        counts[s] += 1;
    }
    let frames = counts
        .iter()
        .enumerate()
        .map(|(s, &n)| {
            let mut f = format!("*{n}\r\n").into_bytes();
            for i in 0..n {
                if (i as usize + s) % 5 == 4 {
                    f.extend_from_slice(b"$-1\r\n"); // a miss now and then
                } else {
                    f.extend_from_slice(format!("${}\r\n", value.len()).as_bytes());
                    f.extend_from_slice(value);
                    f.extend_from_slice(b"\r\n");
                }
            }
            Bytes::from(f)
        })
        .collect();
    (slots, frames)
}

fn merging(c: &mut Criterion) {
    let mut g = c.benchmark_group("merge_mget");
    let value = vec![b'v'; 32];
    for (keys, shards) in [(10usize, 3usize), (100, 3), (100, 10)] {
        let (slots, frames) = mget_parts(keys, shards, &value);
        g.throughput(Throughput::Elements(keys as u64));
        g.bench_function(format!("{keys}_keys_{shards}_shards"), |b| {
            let mut out = BytesMut::with_capacity(64 * 1024);
            b.iter_batched(
                || {
                    let parts: Vec<Option<BackendResult>> = frames.iter().map(|f| Some(Ok(f.clone()))).collect();
                    (Merge::Mget(slots.clone()), parts)
                },
                |(merge, parts)| {
                    out.clear();
                    merge.finish(parts, &mut Encoder::new(&mut out, Protocol::Resp2));
                    black_box(out.len())
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = parsing, ring, command_lookup, merging
}
criterion_main!(benches);
