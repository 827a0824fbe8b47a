//! The pure part of a cross-shard command: which commands run across
//! shards and how ([`Op`]), where the work happens, the names of the
//! temporaries and the rewritten command. No I/O: the router calls
//! [`decide`], the executors in [`super::copy`] and [`super::moves`] follow
//! the plan.

use bytes::{Bytes, BytesMut};

use crate::protocol::request::{put_bulk, put_header};

/// A multi-key command whose keys are on several shards, to be executed by
/// [`super::spawn`] instead of refused.
#[derive(Debug, Clone)]
pub struct CrossPlan {
    /// The client's arguments (command name first).
    pub args: Vec<Bytes>,
    /// Each key: its argument index and its shard, in argument order.
    pub keys: Vec<(usize, usize)>,
    pub op: Op,
}

/// How a cross-shard command is carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Copy the operands not on `exec` there under temporary names, run the
    /// command with the names rewritten, drop the temporaries, in one
    /// MULTI/EXEC on `exec`. `keep_ttl`: the temporaries carry their
    /// source's TTL (COPY copies it).
    Copy { exec: usize, keep_ttl: bool },
    /// RENAME (`nx`: RENAMENX).
    Rename { nx: bool },
    /// SMOVE src dst member.
    Smove,
    /// LMOVE / RPOPLPUSH / BLMOVE / BRPOPLPUSH: pop at `from_left` (or the
    /// right), push at `to_left`; `block`: the timeout argument of the
    /// blocking forms.
    Lmove {
        from_left: bool,
        to_left: bool,
        block: Option<Bytes>,
    },
    /// MSETNX: each shard's pairs, shards in ascending order.
    Msetnx,
}

/// Where the destination of a STORE form is among its keys.
#[derive(Clone, Copy)]
enum Dst {
    /// No destination: a read.
    None,
    /// The first key (SINTERSTORE dst ..., BITOP op dst ...).
    First,
    /// The key with the highest argument index (COPY src dst, SORT ... STORE
    /// dst, GEORADIUS ... STORE dst: the last STORE/STOREDIST wins).
    Last,
}

/// The plan for `name` (the command table's lower-case name) whose keys
/// (argument indices, with `shard_of`) are on several shards; `None` when
/// the command is not one that runs across shards (it stays CROSSSHARD).
pub fn decide(name: &str, args: &[&[u8]], key_idx: &[usize], shard_of: impl Fn(&[u8]) -> usize) -> Option<CrossPlan> {
    let keys: Vec<(usize, usize)> = key_idx.iter().map(|&i| (i, shard_of(args[i]))).collect();
    let copy = |dst: Dst, keep_ttl: bool| {
        let exec = match dst {
            Dst::First => keys.first().map(|k| k.1),
            Dst::Last => keys.iter().max_by_key(|k| k.0).map(|k| k.1),
            Dst::None => most_operands(&keys),
        };
        exec.map(|exec| Op::Copy { exec, keep_ttl })
    };
    let arg_is = |i: usize, w: &str| args.get(i).is_some_and(|a| a.eq_ignore_ascii_case(w.as_bytes()));
    let op = match name {
        "sinter" | "sunion" | "sdiff" | "zunion" | "zinter" | "zdiff" | "sintercard" | "zintercard" | "pfcount"
        | "lcs" => copy(Dst::None, false)?,
        "sinterstore" | "sunionstore" | "sdiffstore" | "zunionstore" | "zinterstore" | "zdiffstore" | "zrangestore"
        | "pfmerge" | "bitop" | "geosearchstore" => copy(Dst::First, false)?,
        "georadius" | "georadiusbymember" | "sort" => copy(Dst::Last, false)?,
        "copy" => copy(Dst::Last, true)?,
        "rename" => Op::Rename { nx: false },
        "renamenx" => Op::Rename { nx: true },
        "smove" => Op::Smove,
        "rpoplpush" => Op::Lmove {
            from_left: false,
            to_left: true,
            block: None,
        },
        "brpoplpush" => Op::Lmove {
            from_left: false,
            to_left: true,
            block: Some(Bytes::copy_from_slice(args.get(3)?)),
        },
        "lmove" | "blmove" => {
            let side = |i| {
                if arg_is(i, "left") {
                    Some(true)
                } else if arg_is(i, "right") {
                    Some(false)
                } else {
                    None
                }
            };
            Op::Lmove {
                from_left: side(3)?,
                to_left: side(4)?,
                block: (name == "blmove").then(|| Bytes::copy_from_slice(args[5])),
            }
        }
        // Unbalanced pairs are not run across shards (CROSSSHARD).
        "msetnx" if args.len() % 2 == 1 => Op::Msetnx,
        _ => return None,
    };
    if matches!(op, Op::Rename { .. } | Op::Smove | Op::Lmove { .. }) && keys.len() != 2 {
        return None;
    }
    Some(CrossPlan {
        args: args.iter().map(|a| Bytes::copy_from_slice(a)).collect(),
        keys,
        op,
    })
}

impl CrossPlan {
    /// The plan under the topology it runs in (`shard_of`, `n_shards`): the
    /// same unless a reload between routing and running moved a key's
    /// owner; then decided again (`None`: no longer possible).
    pub fn refreshed(self: Box<Self>, n_shards: usize, shard_of: impl Fn(&[u8]) -> usize) -> Option<Box<CrossPlan>> {
        let exec_ok = match self.op {
            Op::Copy { exec, .. } => exec < n_shards,
            _ => true,
        };
        if exec_ok
            && self
                .keys
                .iter()
                .all(|&(i, s)| s < n_shards && shard_of(&self.args[i]) == s)
        {
            return Some(self);
        }
        let name = String::from_utf8_lossy(&self.args[0]).to_ascii_lowercase();
        let args: Vec<&[u8]> = self.args.iter().map(|a| &a[..]).collect();
        let idx: Vec<usize> = self.keys.iter().map(|k| k.0).collect();
        decide(&name, &args, &idx, |k| shard_of(k) % n_shards.max(1)).map(Box::new)
    }
}

/// The shard holding the most operands (ties: the one that comes first in
/// argument order).
fn most_operands(keys: &[(usize, usize)]) -> Option<usize> {
    let count = |s: usize| keys.iter().filter(|k| k.1 == s).count();
    let mut best: Option<(usize, usize)> = None;
    for &(_, s) in keys {
        let c = count(s);
        if best.is_none_or(|(_, bc)| c > bc) {
            best = Some((s, c));
        }
    }
    best.map(|b| b.0)
}

/// The prefix of every temporary's name. Temporaries exist only inside the
/// MULTI/EXEC that creates and deletes them; their names are also chosen so
/// the ring maps them to another shard than the one they are created on
/// (see [`temp_tag`]), so no client key of that name can exist there.
pub const TEMP_PREFIX: &str = "{shardis:xs:";

/// A hash tag for the temporaries of one command on shard `exec`: the first
/// candidate (from `seed` on) that the ring (`shard_of`) puts elsewhere, so
/// no client request for these names is ever routed to `exec`. `None` with a
/// single shard (nothing is ever cross-shard then).
pub fn temp_tag(exec: usize, seed: u64, shard_of: impl Fn(&[u8]) -> usize) -> Option<String> {
    (0..64u64).find_map(|i| {
        let tag = format!("{TEMP_PREFIX}{:x}}}", seed.wrapping_add(i));
        (shard_of(tag.as_bytes()) != exec).then_some(tag)
    })
}

/// The copy a command needs: the distinct keys not on `exec` (argument
/// index of their first occurrence, shard) and, for every key argument, the
/// name it gets in the rewritten command.
#[derive(Debug, PartialEq, Eq)]
pub struct Rewrite {
    /// (argument index, shard, temporary name) per distinct remote key.
    pub remote: Vec<(usize, usize, Bytes)>,
    /// The command to run on `exec`.
    pub command: Vec<Bytes>,
}

pub fn rewrite(plan: &CrossPlan, exec: usize, tag: &str) -> Rewrite {
    let mut remote: Vec<(usize, usize, Bytes)> = Vec::new();
    let mut command = plan.args.clone();
    for &(i, s) in &plan.keys {
        if s == exec {
            continue;
        }
        let key = &plan.args[i];
        let tmp = match remote.iter().find(|r| plan.args[r.0] == key) {
            Some(r) => r.2.clone(),
            None => {
                let tmp = Bytes::from(format!("{tag}{}", remote.len()));
                remote.push((i, s, tmp.clone()));
                tmp
            }
        };
        command[i] = tmp;
    }
    Rewrite { remote, command }
}

/// RESP encoding of one command.
pub fn encode<A: AsRef<[u8]>>(args: &[A]) -> Bytes {
    let mut b = BytesMut::with_capacity(16 + args.iter().map(|a| a.as_ref().len() + 16).sum::<usize>());
    put_header(&mut b, b'*', args.len());
    for a in args {
        put_bulk(&mut b, a.as_ref());
    }
    b.freeze()
}

/// Builds MULTI, a RESTORE per copied operand (`ttl` in ms, 0 = none), the
/// command, the DEL of the temporaries, EXEC. Returns the bytes and the
/// frame count (the session gets EXEC's reply: the command's reply is its
/// element at index `restores.len()`).
pub fn transaction(restores: &[(Bytes, i64, Bytes)], command: &[Bytes]) -> (Bytes, u32) {
    let mut b = BytesMut::new();
    let mut frames = 0u32;
    let mut push = |b: &mut BytesMut, part: Bytes| {
        b.extend_from_slice(&part);
        frames += 1;
    };
    push(&mut b, encode(&["MULTI"]));
    for (name, ttl, payload) in restores {
        let ttl = ttl.max(&0).to_string();
        push(&mut b, encode(&[&b"RESTORE"[..], name, ttl.as_bytes(), payload]));
    }
    push(&mut b, encode(command));
    if !restores.is_empty() {
        let mut del: Vec<&[u8]> = vec![b"DEL"];
        del.extend(restores.iter().map(|r| &r.0[..]));
        push(&mut b, encode(&del));
    }
    push(&mut b, encode(&["EXEC"]));
    (b.freeze(), frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard_of(k: &[u8]) -> usize {
        // Keys name their shard: "a..." on 0, "b..." on 1, "c..." on 2.
        (k.first().copied().unwrap_or(b'a').saturating_sub(b'a') % 3) as usize
    }

    fn plan(cmd: &str, keys: &[usize]) -> Option<CrossPlan> {
        let args: Vec<&[u8]> = cmd.split(' ').map(str::as_bytes).collect();
        let name = cmd.split(' ').next().unwrap().to_lowercase();
        decide(&name, &args, keys, shard_of)
    }

    #[test]
    fn reads_run_where_most_operands_are() {
        let p = plan("sunion b1 a1 b2", &[1, 2, 3]).unwrap();
        assert_eq!(
            p.op,
            Op::Copy {
                exec: 1,
                keep_ttl: false
            }
        );
        let p = plan("sinter a1 b1", &[1, 2]).unwrap();
        assert_eq!(
            p.op,
            Op::Copy {
                exec: 0,
                keep_ttl: false
            }
        );
    }

    #[test]
    fn stores_run_on_the_destination_shard() {
        let p = plan("sunionstore c1 a1 a2 b1", &[1, 2, 3, 4]).unwrap();
        assert_eq!(
            p.op,
            Op::Copy {
                exec: 2,
                keep_ttl: false
            }
        );
        let p = plan("copy a1 b1", &[1, 2]).unwrap();
        assert_eq!(
            p.op,
            Op::Copy {
                exec: 1,
                keep_ttl: true
            }
        );
        // GEORADIUS: the STORE key at the highest index wins.
        let p = plan("georadius a1 0 0 1 km storedist b1 store c1", &[1, 9, 7]).unwrap();
        assert_eq!(
            p.op,
            Op::Copy {
                exec: 2,
                keep_ttl: false
            }
        );
    }

    #[test]
    fn moves_and_the_rest() {
        assert_eq!(plan("rename a b", &[1, 2]).unwrap().op, Op::Rename { nx: false });
        let p = plan("blmove a b LEFT right 1.5", &[1, 2]).unwrap();
        assert_eq!(
            p.op,
            Op::Lmove {
                from_left: true,
                to_left: false,
                block: Some(Bytes::from_static(b"1.5"))
            }
        );
        assert!(plan("lmove a b up down", &[1, 2]).is_none());
        assert!(plan("eval x 2 a b", &[3, 4]).is_none());
        assert!(plan("msetnx a 1 b 2", &[1, 3]).is_some());
        assert!(plan("msetnx a 1 b", &[1, 3]).is_none());
    }

    #[test]
    fn a_plan_follows_a_reload() {
        let p = Box::new(plan("sunionstore c1 a1 b1", &[1, 2, 3]).unwrap());
        let same = p.clone().refreshed(3, shard_of).unwrap();
        assert_eq!(same.op, p.op);
        // Two shards now: "c..." keys are on shard 0.
        let moved = p.refreshed(2, |k| shard_of(k) % 2).unwrap();
        assert_eq!(
            moved.op,
            Op::Copy {
                exec: 0,
                keep_ttl: false
            }
        );
        assert_eq!(moved.keys, [(1, 0), (2, 0), (3, 1)]);
    }

    #[test]
    fn rewrite_copies_each_remote_key_once() {
        let p = plan("sunionstore a0 b1 a2 b1 c3", &[1, 2, 3, 4, 5]).unwrap();
        let tag = temp_tag(0, 7, shard_of).unwrap();
        assert_ne!(shard_of(tag.as_bytes()), 0);
        let r = rewrite(&p, 0, &tag);
        assert_eq!(r.remote.len(), 2);
        assert_eq!(r.remote[0].0, 2);
        assert_eq!(r.remote[1].1, 2);
        let t0 = Bytes::from(format!("{tag}0"));
        let t1 = Bytes::from(format!("{tag}1"));
        assert_eq!(r.command[2], t0);
        assert_eq!(r.command[4], t0);
        assert_eq!(r.command[5], t1);
        assert_eq!(&r.command[1][..], b"a0");
    }

    #[test]
    fn the_transaction_restores_runs_and_deletes() {
        let (b, frames) = transaction(
            &[(Bytes::from_static(b"t0"), 60000, Bytes::from_static(b"P"))],
            &[Bytes::from_static(b"SCARD"), Bytes::from_static(b"t0")],
        );
        assert_eq!(frames, 5);
        let s = String::from_utf8_lossy(&b);
        assert!(s.starts_with("*1\r\n$5\r\nMULTI\r\n*4\r\n$7\r\nRESTORE\r\n$2\r\nt0\r\n$5\r\n60000\r\n"));
        assert!(s.ends_with("*2\r\n$3\r\nDEL\r\n$2\r\nt0\r\n*1\r\n$4\r\nEXEC\r\n"));
        let (_, frames) = transaction(&[], &[Bytes::from_static(b"PING")]);
        assert_eq!(frames, 3);
    }
}
