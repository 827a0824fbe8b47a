//! Key → shard mapping: hash tags, xxh3, and a slot table built by weighted
//! rendezvous hashing.
//!
//! A key's hash is xxh3-64 of the key, or of its hash tag under Redis
//! Cluster's exact rule (`{user1}.a` and `{user1}.b` land together). The top
//! `slot_bits` bits of the hash pick one of 2^slot_bits slots, and a flat
//! table says which shard owns each slot, so a lookup is one hash plus one
//! array read, with no search. A small ring of equal weights (the common
//! deployment) computes the slot's owner instead, with the table's own
//! function: a few multiplications cost less than the cache miss of reading
//! a 512 KiB table at a random place (see [`DIRECT_MAX`]).
//!
//! The table is a pure function of the members' names and weights: each slot
//! goes to the member with the highest weighted rendezvous score
//! `w / -ln(u)`, where `u` is a uniform number drawn from the slot and the
//! member's name. This gives
//! * the same table in every proxy with the same membership, whatever the
//!   order of the config file or the history of changes;
//! * minimal movement: adding a member moves only the slots it wins, removing
//!   one moves only its own slots, and no slot ever moves between two members
//!   that both stay;
//! * shares proportional to weight, within the sampling spread of the slot
//!   count (about 1/sqrt(slots per shard)), which is why the default is 2^18
//!   slots rather than a ketama ring's 160 points per shard.
//!
//! Building costs slots × members cheap hash mixes (about 50 ms for 100
//! shards in a release build); it happens only when the membership changes.

use xxhash_rust::xxh3::xxh3_64;

/// Returns the part of `key` that is hashed: the content of the first `{...}`
/// if it is non-empty, else the whole key (Redis Cluster's rule, byte for byte).
pub fn hash_tag(key: &[u8]) -> &[u8] {
    // memchr compares 16 or 32 bytes at a time: a key without a tag (the
    // common case) costs a few instructions, not one loop turn per byte
    // (bench/callgrind.sh GET -P 16: 54 -> 15 instructions per request).
    if let Some(open) = memchr::memchr(b'{', key) {
        if let Some(close) = memchr::memchr(b'}', &key[open + 1..]) {
            if close > 0 {
                return &key[open + 1..open + 1 + close];
            }
        }
    }
    key
}

/// The 64-bit hash that decides a key's slot.
#[inline]
pub fn key_hash(key: &[u8]) -> u64 {
    xxh3_64(hash_tag(key))
}

/// A shard as the ring sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub weight: u32,
}

/// The immutable slot table.
#[derive(Debug, Clone)]
pub struct Ring {
    shift: u32,
    /// Owner of each slot, as an index into the member list it was built from.
    table: Box<[u16]>,
    members: usize,
    /// For a small ring of equal weights, what a key's owner is computed
    /// from instead of read from the table (see [`DIRECT_MAX`]): each
    /// member's seed and the rank of its name (the tie-break).
    direct: Option<Box<[(u64, u16)]>>,
}

/// Rings of at most this many members, all of one weight, compute a key's
/// owner (its slot's rendezvous: one mix per member, no ln) rather than
/// read it from the table. The table (2^18 slots, 512 KiB by default) is
/// read at a random place per key, and misses the cache: `perf record -e
/// cpu-clock` on GET -P 1 through the proxy put 1.15% of its CPU (8% of its
/// user time) in `shard_of`, 98% of that on the instruction after the
/// table read. The same function as the table's, so the same owner
/// (tested slot by slot); larger or weighted rings keep the table.
const DIRECT_MAX: usize = 8;

/// The owner of `slot` among members with these (seed, name rank), all of
/// one weight: the highest mix, ties to the smaller name, as
/// [`Ring::build`] decides within a weight group.
#[inline]
fn owner_direct(members: &[(u64, u16)], slot: u64) -> usize {
    let s = mix(slot ^ SLOT_SALT);
    let (mut best_h, mut best_rank, mut best) = (0u64, u16::MAX, usize::MAX);
    for (i, &(seed, rank)) in members.iter().enumerate() {
        let h = mix(s ^ seed);
        if h > best_h || (h == best_h && (best == usize::MAX || rank < best_rank)) {
            (best_h, best_rank, best) = (h, rank, i);
        }
    }
    best
}

/// Mixed into a slot number before its rendezvous.
const SLOT_SALT: u64 = 0x9e37_79b9_7f4a_7c15;

/// The SplitMix64 finalizer: a fast bijective mix with good avalanche.
#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Ring {
    /// The ring a configuration describes: its backends' names and weights.
    pub fn for_config(config: &crate::config::Config) -> Ring {
        let members: Vec<Member> = config
            .backends
            .iter()
            .map(|b| Member {
                name: b.name.clone(),
                weight: b.weight,
            })
            .collect();
        Ring::build(&members, config.ring.slot_bits)
    }

    /// Builds the table for `members` (at least one, at most 65,535) over
    /// 2^`slot_bits` slots. Member indices in the table follow `members`.
    pub fn build(members: &[Member], slot_bits: u8) -> Ring {
        assert!(
            !members.is_empty() && members.len() <= u16::MAX as usize,
            "1..=65535 members"
        );
        assert!((1..=24).contains(&slot_bits), "slot_bits out of range");
        let nslots = 1usize << slot_bits;
        let seeds: Vec<u64> = members.iter().map(|m| xxh3_64(m.name.as_bytes())).collect();
        // Group members by weight: within a group the score is monotonic in
        // the raw hash, so only each group's best needs the logarithm.
        let mut weights: Vec<u32> = members.iter().map(|m| m.weight).collect();
        weights.sort_unstable();
        weights.dedup();
        let group_of: Vec<usize> = members
            .iter()
            .map(|m| weights.binary_search(&m.weight).unwrap_or(0))
            .collect();
        let mut best: Vec<(u64, usize)> = vec![(0, usize::MAX); weights.len()];
        let mut table = vec![0u16; nslots].into_boxed_slice();
        for (slot, owner) in table.iter_mut().enumerate() {
            let s = mix(slot as u64 ^ SLOT_SALT);
            best.iter_mut().for_each(|b| *b = (0, usize::MAX));
            for (i, &seed) in seeds.iter().enumerate() {
                let h = mix(s ^ seed);
                let b = &mut best[group_of[i]];
                if h > b.0 || (h == b.0 && tie_wins(members, i, b.1)) {
                    *b = (h, i);
                }
            }
            let mut winner = usize::MAX;
            let mut top = f64::NEG_INFINITY;
            for (g, &(h, i)) in best.iter().enumerate() {
                if i == usize::MAX {
                    continue;
                }
                // u in (0, 1); score = w / -ln(u) is larger for u near 1.
                let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
                let score = weights[g] as f64 / -u.ln();
                if score > top || (score == top && tie_wins(members, i, winner)) {
                    top = score;
                    winner = i;
                }
            }
            *owner = winner as u16;
        }
        let direct = (weights.len() == 1 && members.len() <= DIRECT_MAX).then(|| {
            members
                .iter()
                .zip(&seeds)
                .map(|(m, &seed)| {
                    let rank = members.iter().filter(|o| o.name < m.name).count();
                    (seed, rank as u16)
                })
                .collect()
        });
        Ring {
            shift: 64 - slot_bits as u32,
            table,
            members: members.len(),
            direct,
        }
    }

    /// The member index that owns `key`.
    #[inline]
    pub fn shard_of(&self, key: &[u8]) -> usize {
        self.shard_of_hash(key_hash(key))
    }

    /// The member index that owns a key with hash `h`.
    #[inline]
    pub fn shard_of_hash(&self, h: u64) -> usize {
        let slot = h >> self.shift;
        if let Some(members) = &self.direct {
            return owner_direct(members, slot);
        }
        // `shift` >= 40, so the index is below table.len().
        self.table[slot as usize] as usize
    }

    /// The member index that owns slot `slot` (below [`Ring::slots`]).
    #[inline]
    pub fn owner_of_slot(&self, slot: usize) -> usize {
        self.table[slot] as usize
    }

    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.table.len()
    }

    /// Number of members the table was built for.
    pub fn members(&self) -> usize {
        self.members
    }

    /// Slots owned by each member.
    pub fn slot_counts(&self) -> Vec<usize> {
        let mut c = vec![0; self.members];
        for &o in self.table.iter() {
            c[o as usize] += 1;
        }
        c
    }
}

/// Deterministic tie-break between equal scores: the smaller name wins.
fn tie_wins(members: &[Member], cand: usize, cur: usize) -> bool {
    cur == usize::MAX || members[cand].name < members[cur].name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn computed_owners_are_the_tables_slot_by_slot() {
        let named = |names: &[&str], weight: u32| -> Vec<Member> {
            names
                .iter()
                .map(|n| Member {
                    name: n.to_string(),
                    weight,
                })
                .collect()
        };
        let sets = [
            named(&["a"], 1),
            named(&["shard-b", "shard-a"], 3),
            named(&["z", "m", "a"], 1),
            named(&["s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8"], 5),
            named(&["dup", "dup", "x"], 1),
        ];
        for set in &sets {
            for bits in [10, 18] {
                let ring = Ring::build(set, bits);
                assert!(ring.direct.is_some(), "{set:?}");
                let table = Ring {
                    direct: None,
                    ..ring.clone()
                };
                for slot in 0..ring.slots() as u64 {
                    let h = slot << (64 - bits as u32) | (slot * 0x9e37) & ((1 << (64 - bits as u32)) - 1);
                    assert_eq!(ring.shard_of_hash(h), table.shard_of_hash(h), "{set:?} slot {slot}");
                }
            }
        }
        // Nine members, or two weights: the table.
        assert!(Ring::build(&members(9), 10).direct.is_none());
        let mut mixed = members(3);
        mixed[0].weight = 2;
        assert!(Ring::build(&mixed, 10).direct.is_none());
    }

    fn members(n: usize) -> Vec<Member> {
        (0..n)
            .map(|i| Member {
                name: format!("shard-{i}"),
                weight: 1,
            })
            .collect()
    }

    #[test]
    fn hash_tags_follow_redis_cluster() {
        assert_eq!(hash_tag(b"{user1000}.following"), b"user1000");
        assert_eq!(hash_tag(b"foo{}{bar}"), b"foo{}{bar}");
        assert_eq!(hash_tag(b"foo{{bar}}zap"), b"{bar");
        assert_eq!(hash_tag(b"foo{bar}{zap}"), b"bar");
        assert_eq!(hash_tag(b"{}foo"), b"{}foo");
        assert_eq!(hash_tag(b"plain"), b"plain");
        assert_eq!(hash_tag(b"a{b"), b"a{b");
        assert_eq!(hash_tag(b""), b"");
    }

    #[test]
    fn same_membership_same_table_whatever_the_order() {
        let a = members(7);
        let mut b = a.clone();
        b.reverse();
        let ra = Ring::build(&a, 14);
        let rb = Ring::build(&b, 14);
        for k in 0..5000 {
            let key = format!("k{k}");
            assert_eq!(a[ra.shard_of(key.as_bytes())].name, b[rb.shard_of(key.as_bytes())].name);
        }
    }

    #[test]
    fn tagged_keys_colocate() {
        let r = Ring::build(&members(10), 14);
        for i in 0..200 {
            let a = format!("{{user{i}}}:a");
            let b = format!("x{{user{i}}}:b");
            assert_eq!(r.shard_of(a.as_bytes()), r.shard_of(b.as_bytes()));
        }
    }

    #[test]
    fn add_and_remove_move_only_what_they_must() {
        let bits = 14;
        let m = members(10);
        let before = Ring::build(&m, bits);
        let mut grown = m.clone();
        grown.push(Member {
            name: "shard-new".into(),
            weight: 1,
        });
        let after = Ring::build(&grown, bits);
        let mut moved = 0;
        for s in 0..before.slots() {
            let (o, n) = (before.table[s] as usize, after.table[s] as usize);
            if m[o].name != grown[n].name {
                assert_eq!(n, 10, "a slot moved between two members that both stay");
                moved += 1;
            }
        }
        let frac = moved as f64 / before.slots() as f64;
        assert!(frac < 1.1 / 11.0 && frac > 0.9 / 11.0, "moved {frac}");
        // Remove shard-3: only its slots move.
        let shrunk: Vec<Member> = m.iter().filter(|x| x.name != "shard-3").cloned().collect();
        let after = Ring::build(&shrunk, bits);
        for s in 0..before.slots() {
            let (o, n) = (&m[before.table[s] as usize].name, &shrunk[after.table[s] as usize].name);
            if o != n {
                assert_eq!(o, "shard-3");
            }
        }
    }

    #[test]
    fn weights_give_proportional_shares() {
        let mut m = members(6);
        m[0].weight = 3;
        m[1].weight = 2;
        let r = Ring::build(&m, 16);
        let c = r.slot_counts();
        let total_w: u32 = m.iter().map(|x| x.weight).sum();
        for (i, x) in m.iter().enumerate() {
            let want = r.slots() as f64 * x.weight as f64 / total_w as f64;
            let err = (c[i] as f64 - want).abs() / want;
            assert!(err < 0.05, "member {i}: {} slots, want {want}", c[i]);
        }
    }

    #[test]
    fn single_member_owns_everything() {
        let r = Ring::build(&members(1), 16);
        assert_eq!(r.slot_counts(), vec![65536]);
    }
}
