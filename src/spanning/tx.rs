//! A MULTI/EXEC whose commands are on several shards, as pure steps:
//! [`split`] groups the queued commands into one part per shard, in the
//! order of each part's first command; [`Part::batch`] is the part's
//! `MULTI … EXEC`; [`assemble`] puts the parts' EXEC replies back in command
//! order; [`failure`] words the error when a part could not be committed.
//!
//! Keyless commands (PING, ECHO …) go with the part of the command before
//! them (the first keyed command's part when they lead), so they are
//! answered in place and never add a shard.

use bytes::{Bytes, BytesMut};

use crate::protocol::reply;
use crate::protocol::request::{put_bulk, put_header};

/// One shard's share of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub shard: usize,
    /// The commands of this part: indices into the transaction's sent
    /// commands (not counting PUBLISH), in queue order.
    pub cmds: Vec<usize>,
}

impl Part {
    /// `MULTI`, this part's commands (`raws` are all the transaction's sent
    /// commands), `EXEC`; and the reply frames it produces.
    pub fn batch(&self, raws: &[Bytes]) -> (Bytes, u32) {
        let len: usize = self.cmds.iter().map(|&i| raws[i].len()).sum();
        let mut buf = BytesMut::with_capacity(len + 32);
        put_header(&mut buf, b'*', 1);
        put_bulk(&mut buf, b"MULTI");
        for &i in &self.cmds {
            buf.extend_from_slice(&raws[i]);
        }
        put_header(&mut buf, b'*', 1);
        put_bulk(&mut buf, b"EXEC");
        (buf.freeze(), self.cmds.len() as u32 + 2)
    }
}

/// Groups commands by shard (`shards[i]`: command i's shard, `None` for a
/// keyless one). Parts are ordered by their first command, so a part is
/// committed before any part whose first command came later. `None` when no
/// command has a key (the caller sends the whole to one shard).
pub fn split(shards: &[Option<usize>]) -> Option<Vec<Part>> {
    let first = shards.iter().find_map(|s| *s)?;
    let mut parts: Vec<Part> = Vec::new();
    let mut current = first;
    for (i, s) in shards.iter().enumerate() {
        if let Some(s) = s {
            current = *s;
        }
        match parts.iter_mut().find(|p| p.shard == current) {
            Some(p) => p.cmds.push(i),
            None => parts.push(Part {
                shard: current,
                cmds: vec![i],
            }),
        }
    }
    Some(parts)
}

/// While the client WATCHes keys on `watched`: that shard's part goes first
/// (an empty one when no command is there), since its EXEC is the one the
/// WATCH guards: when it answers nil nothing at all has been applied. The
/// other parts keep their order.
pub fn watched_first(mut parts: Vec<Part>, watched: usize) -> Vec<Part> {
    let w = match parts.iter().position(|p| p.shard == watched) {
        Some(i) => parts.remove(i),
        None => Part {
            shard: watched,
            cmds: Vec::new(),
        },
    };
    parts.insert(0, w);
    parts
}

/// EXEC's reply for the whole transaction: every part's EXEC array (in part
/// order) spread back to the commands' places. `Err(part)` names the first
/// part whose reply is not an array of the right length (an error, nil).
pub fn assemble(n: usize, parts: &[Part], replies: &[Bytes]) -> Result<Bytes, usize> {
    let mut slots: Vec<Option<Bytes>> = vec![None; n];
    for (p, part) in parts.iter().enumerate() {
        let els = replies
            .get(p)
            .and_then(reply::elements)
            .filter(|e| e.len() == part.cmds.len())
            .ok_or(p)?;
        for (&i, e) in part.cmds.iter().zip(els) {
            if let Some(s) = slots.get_mut(i) {
                *s = Some(e);
            }
        }
    }
    let len: usize = slots.iter().flatten().map(|e| e.len()).sum();
    let mut buf = BytesMut::with_capacity(len + 16);
    put_header(&mut buf, b'*', n);
    for s in &slots {
        match s {
            Some(e) => buf.extend_from_slice(e),
            None => return Err(parts.len()),
        }
    }
    Ok(buf.freeze())
}

/// How the part that failed ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failed {
    /// Known not applied: the shard refused it (EXECABORT) or was not reached.
    NotApplied,
    /// Sent and not answered (the connection broke, a timeout): it may have
    /// been applied.
    Unknown,
}

/// The error EXEC answers when part `at` failed (`why`): parts before it
/// were applied, parts after it were not sent. Commands are numbered from 1
/// in the client's queue order (`place[i]`: sent command i's place).
pub fn failure(parts: &[Part], names: &[&str], place: &[usize], at: usize, how: Failed, why: &str) -> String {
    let describe = |p: &Part| {
        let cmds: Vec<String> = p
            .cmds
            .iter()
            .map(|&i| (place.get(i).copied().unwrap_or(i) + 1).to_string())
            .collect();
        let name = names.get(p.shard).copied().unwrap_or("?");
        if cmds.is_empty() {
            return format!("shard {name} (the WATCH check)");
        }
        format!("shard {name} (commands {})", cmds.join(","))
    };
    let list = |ps: &[Part]| -> String {
        if ps.is_empty() {
            "none".into()
        } else {
            ps.iter().map(describe).collect::<Vec<_>>().join(", ")
        }
    };
    let at = at.min(parts.len().saturating_sub(1));
    let state = match how {
        Failed::NotApplied => "not applied",
        Failed::Unknown => "may or may not have been applied",
    };
    let why = why.trim_end().replace(['\r', '\n'], " ");
    format!(
        "shardis: cross-shard transaction failed at part {} of {}, {} ({state}: {why}); applied: {}; not applied: {}",
        at + 1,
        parts.len(),
        describe(&parts[at]),
        list(&parts[..at]),
        list(&parts[at + 1..]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_follow_their_first_command_and_keyless_ones_join_the_one_before() {
        // PING, SET a(1), ECHO, RPUSH q(0), HSET a(1), PING
        let shards = [None, Some(1), None, Some(0), Some(1), None];
        let parts = split(&shards).unwrap();
        assert_eq!(
            parts,
            vec![
                Part {
                    shard: 1,
                    cmds: vec![0, 1, 2, 4, 5]
                },
                Part {
                    shard: 0,
                    cmds: vec![3]
                },
            ]
        );
        assert_eq!(split(&[None, None]), None);
        assert_eq!(split(&[Some(2)]).unwrap().len(), 1);
    }

    #[test]
    fn the_watched_shard_goes_first_even_with_nothing_to_do() {
        let parts = split(&[Some(0), Some(1), Some(2)]).unwrap();
        let order = |ps: &[Part]| ps.iter().map(|p| (p.shard, p.cmds.clone())).collect::<Vec<_>>();
        assert_eq!(
            order(&watched_first(parts.clone(), 2)),
            [(2, vec![2]), (0, vec![0]), (1, vec![1])]
        );
        assert_eq!(
            order(&watched_first(parts, 5)),
            [(5, vec![]), (0, vec![0]), (1, vec![1]), (2, vec![2])]
        );
        // An empty part is an empty MULTI/EXEC: it checks the WATCH.
        let (b, frames) = Part { shard: 5, cmds: vec![] }.batch(&[]);
        assert_eq!((&b[..], frames), (&b"*1\r\n$5\r\nMULTI\r\n*1\r\n$4\r\nEXEC\r\n"[..], 2));
        let replies = [Bytes::from_static(b"*0\r\n"), Bytes::from_static(b"*1\r\n:1\r\n")];
        let parts = vec![
            Part { shard: 5, cmds: vec![] },
            Part {
                shard: 0,
                cmds: vec![0],
            },
        ];
        assert_eq!(&assemble(1, &parts, &replies).unwrap()[..], b"*1\r\n:1\r\n");
    }

    #[test]
    fn a_part_is_one_multi_exec() {
        let raws: Vec<Bytes> = [&b"*1\r\n$4\r\nPING\r\n"[..], &b"*2\r\n$4\r\nINCR\r\n$1\r\na\r\n"[..]]
            .into_iter()
            .map(Bytes::from_static)
            .collect();
        let (b, frames) = Part {
            shard: 0,
            cmds: vec![1],
        }
        .batch(&raws);
        assert_eq!(frames, 3);
        assert_eq!(
            &b[..],
            b"*1\r\n$5\r\nMULTI\r\n*2\r\n$4\r\nINCR\r\n$1\r\na\r\n*1\r\n$4\r\nEXEC\r\n"
        );
    }

    #[test]
    fn replies_go_back_in_command_order() {
        let parts = vec![
            Part {
                shard: 1,
                cmds: vec![0, 2],
            },
            Part {
                shard: 0,
                cmds: vec![1],
            },
        ];
        let replies = [
            Bytes::from_static(b"*2\r\n+OK\r\n:5\r\n"),
            Bytes::from_static(b"*1\r\n$1\r\nx\r\n"),
        ];
        let r = assemble(3, &parts, &replies).unwrap();
        assert_eq!(&r[..], b"*3\r\n+OK\r\n$1\r\nx\r\n:5\r\n");
        // A part that answered an error (or nil, or too few) is named.
        let bad = [
            Bytes::from_static(b"*2\r\n+OK\r\n:5\r\n"),
            Bytes::from_static(b"-EXECABORT x\r\n"),
        ];
        assert_eq!(assemble(3, &parts, &bad), Err(1));
        let short = [Bytes::from_static(b"*1\r\n+OK\r\n")];
        assert_eq!(assemble(3, &parts, &short), Err(0));
    }

    #[test]
    fn the_failure_says_which_parts_applied() {
        let parts = vec![
            Part {
                shard: 0,
                cmds: vec![0, 2],
            },
            Part {
                shard: 2,
                cmds: vec![1],
            },
            Part {
                shard: 1,
                cmds: vec![3],
            },
        ];
        // A PUBLISH was queued second: the sent commands sit at places 0, 2, 3, 4.
        let place = [0, 2, 3, 4];
        let m = failure(
            &parts,
            &["s0", "s1", "s2"],
            &place,
            1,
            Failed::Unknown,
            "connection lost\r\n",
        );
        assert_eq!(
            m,
            "shardis: cross-shard transaction failed at part 2 of 3, shard s2 (commands 3) \
             (may or may not have been applied: connection lost); applied: shard s0 (commands 1,4); \
             not applied: shard s1 (commands 5)"
        );
        let m = failure(&parts, &["s0", "s1", "s2"], &place, 0, Failed::NotApplied, "down");
        assert!(
            m.contains("applied: none; not applied: shard s2 (commands 3), shard s1 (commands 5)"),
            "{m}"
        );
    }
}
