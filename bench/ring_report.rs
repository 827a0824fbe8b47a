//! Ring report: balance, movement on join/leave, build time and lookup time of
//! `shardis::ring::Ring` for 1M keys (`key:{i}`) at 10, 100 and 1000 shards.
//!
//! Run: `cargo run --release --example ring_report [-- KEYS [SLOT_BITS]]`
//! (defaults: 1,000,000 keys, 18 slot bits as in the default config).
//!
//! For reference it also prints the balance of a plain ketama-style ring with
//! 160 points per shard (xxh3 points, binary search) over the same keys: the
//! figure DESIGN.md quotes for why the slot table exists.

use std::hint::black_box;
use std::time::Instant;

use shardis::ring::{Member, Ring, key_hash};
use shardis::testkit::members;
use xxhash_rust::xxh3::xxh3_64;

/// Owner name of every key.
fn owners<'a>(ring: &Ring, members: &'a [Member], keys: &[Vec<u8>]) -> Vec<&'a str> {
    keys.iter().map(|k| members[ring.shard_of(k)].name.as_str()).collect()
}

struct Movement {
    moved: usize,
    /// Keys that moved from one shard to another shard that exists both
    /// before and after the change (must be 0).
    between_stayers: usize,
}

fn movement(before: &[&str], after: &[&str], before_m: &[Member], after_m: &[Member]) -> Movement {
    let in_before = |n: &str| before_m.iter().any(|m| m.name == n);
    let in_after = |n: &str| after_m.iter().any(|m| m.name == n);
    let mut moved = 0;
    let mut between_stayers = 0;
    for (a, b) in before.iter().zip(after) {
        if a != b {
            moved += 1;
            if in_after(a) && in_before(b) {
                between_stayers += 1;
            }
        }
    }
    Movement { moved, between_stayers }
}

fn balance(counts: &[usize], total: usize) -> (f64, f64) {
    let mean = total as f64 / counts.len() as f64;
    let max = *counts.iter().max().unwrap_or(&0) as f64;
    let min = *counts.iter().min().unwrap_or(&0) as f64;
    (max / mean, min / mean)
}

/// A plain ketama-style ring (160 points per shard, binary search), for the
/// balance comparison only.
fn ketama_counts(n: usize, keys: &[Vec<u8>]) -> Vec<usize> {
    let mut points: Vec<(u64, u32)> = Vec::with_capacity(n * 160);
    for s in 0..n {
        for p in 0..160 {
            points.push((xxh3_64(format!("shard-{s}-{p}").as_bytes()), s as u32));
        }
    }
    points.sort_unstable();
    let mut counts = vec![0usize; n];
    for k in keys {
        let h = key_hash(k);
        let i = points.partition_point(|&(p, _)| p < h);
        let owner = points.get(i).unwrap_or(&points[0]).1;
        counts[owner as usize] += 1;
    }
    counts
}

fn main() {
    let mut args = std::env::args().skip(1);
    let nkeys: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let bits: u8 = args.next().and_then(|a| a.parse().ok()).unwrap_or(18);
    let keys: Vec<Vec<u8>> = (0..nkeys).map(|i| format!("key:{i}").into_bytes()).collect();
    println!("# Ring report: {nkeys} keys `key:{{i}}`, 2^{bits} slots, weighted rendezvous slot table\n");
    println!(
        "| shards | busiest/mean | idle-most/mean | slots busiest/mean | ketama-160 busiest/mean | add 1: moved | optimal 1/(n+1) | ratio | \
         remove 1: moved | optimal 1/n | ratio | moved between stayers | build ms | lookup ns |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for n in [10usize, 100, 1000] {
        let m = members(n);
        let t = Instant::now();
        let ring = Ring::build(&m, bits);
        let build_ms = t.elapsed().as_secs_f64() * 1e3;

        // Balance over the keys.
        let mut counts = vec![0usize; n];
        for k in &keys {
            counts[ring.shard_of(k)] += 1;
        }
        let (busiest, idlest) = balance(&counts, nkeys);
        let (slot_busiest, _) = balance(&ring.slot_counts(), ring.slots());
        let (ketama_busiest, _) = balance(&ketama_counts(n, &keys), nkeys);

        // Lookup time, hash included: best of 3 passes over all keys.
        let mut best = f64::INFINITY;
        for _ in 0..3 {
            let t = Instant::now();
            let mut acc = 0usize;
            for k in &keys {
                acc = acc.wrapping_add(ring.shard_of(black_box(k)));
            }
            black_box(acc);
            best = best.min(t.elapsed().as_secs_f64() * 1e9 / nkeys as f64);
        }

        let before = owners(&ring, &m, &keys);
        // Add one shard.
        let mut grown = m.clone();
        grown.push(Member {
            name: "shard-new".into(),
            weight: 1,
        });
        let after = owners(&Ring::build(&grown, bits), &grown, &keys);
        let add = movement(&before, &after, &m, &grown);
        // Remove one shard (one from the middle of the list).
        let gone = format!("shard-{}", n / 2);
        let shrunk: Vec<Member> = m.iter().filter(|x| x.name != gone).cloned().collect();
        let after = owners(&Ring::build(&shrunk, bits), &shrunk, &keys);
        let remove = movement(&before, &after, &m, &shrunk);

        let add_frac = add.moved as f64 / nkeys as f64;
        let add_opt = 1.0 / (n + 1) as f64;
        let rm_frac = remove.moved as f64 / nkeys as f64;
        let rm_opt = 1.0 / n as f64;
        println!(
            "| {n} | {busiest:.3} | {idlest:.3} | {slot_busiest:.3} | {ketama_busiest:.3} | {:.4}% | {:.4}% | {:.3} | {:.4}% | {:.4}% | {:.3} | {} | {build_ms:.1} | {best:.1} |",
            add_frac * 100.0,
            add_opt * 100.0,
            add_frac / add_opt,
            rm_frac * 100.0,
            rm_opt * 100.0,
            rm_frac / rm_opt,
            add.between_stayers + remove.between_stayers,
        );
    }
    println!(
        "\nbusiest/mean: largest key count on one shard over the mean (slots busiest/mean: the same \
         for slot counts, the table's own spread without the key sample's). moved: share of keys whose owner \
         changed; ratio = moved / optimal. lookup ns: Ring::shard_of (xxh3 of the key or its hash tag + \
         one table read), best of 3 passes over all keys."
    );
}
