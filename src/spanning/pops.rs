//! Blocking pops over keys of several shards, as pure steps: [`Pop::parse`]
//! reads the command (keys, timeout), [`runs`] and [`by_shard`] group its
//! keys, [`Pop::command`] is the command for some of its keys (sent inside
//! MULTI to try without blocking, or alone on a connection of its own to
//! wait), [`tried`] reads a try's answer, and [`Pop::give_back`] is the
//! command that puts back what a second shard popped after the first
//! answered (LPUSH/RPUSH to the end it came from, ZADD with its score).

use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::error::ReplyError;
use crate::protocol::reply;
use crate::protocol::request::{put_bulk, put_header};

/// The blocking pops that may wait on several shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmd {
    Blpop,
    Brpop,
    Bzpopmin,
    Bzpopmax,
    Blmpop,
    Bzmpop,
}

impl Cmd {
    /// The command named `name` (the command table's lowercase name).
    pub fn of(name: &str) -> Option<Cmd> {
        Some(match name {
            "blpop" => Cmd::Blpop,
            "brpop" => Cmd::Brpop,
            "bzpopmin" => Cmd::Bzpopmin,
            "bzpopmax" => Cmd::Bzpopmax,
            "blmpop" => Cmd::Blmpop,
            "bzmpop" => Cmd::Bzmpop,
            _ => return None,
        })
    }

    /// `timeout numkeys key … rest` rather than `key … timeout`.
    fn numkeys(self) -> bool {
        matches!(self, Cmd::Blmpop | Cmd::Bzmpop)
    }
}

/// A blocking pop's parts.
#[derive(Debug, Clone, PartialEq)]
pub struct Pop {
    pub cmd: Cmd,
    /// The command's name as the client sent it.
    name: Bytes,
    /// The keys, in argument order (their priority).
    pub keys: Vec<Bytes>,
    /// Seconds; 0 waits for ever.
    pub timeout: f64,
    /// BLMPOP / BZMPOP: what follows the keys (`LEFT|RIGHT [COUNT n]`).
    rest: Vec<Bytes>,
}

impl Pop {
    /// Reads `args` (the whole command) for `cmd`, with Redis's errors for a
    /// bad timeout or key count.
    pub fn parse(cmd: Cmd, args: &[&[u8]]) -> Result<Pop, ReplyError> {
        let b = |a: &[u8]| Bytes::copy_from_slice(a);
        let (timeout, keys, rest) = if cmd.numkeys() {
            let n = args
                .get(2)
                .and_then(|a| std::str::from_utf8(a).ok())
                .and_then(|s| s.parse::<i64>().ok())
                .ok_or_else(|| ReplyError::err("numkeys should be greater than 0"))?;
            if n <= 0 {
                return Err(ReplyError::err("numkeys should be greater than 0"));
            }
            let end = 3 + n as usize;
            if end >= args.len() {
                return Err(ReplyError::err("syntax error"));
            }
            (args[1], &args[3..end], &args[end..])
        } else {
            if args.len() < 3 {
                return Err(ReplyError::wrong_arity(if cmd == Cmd::Blpop {
                    "blpop"
                } else {
                    "brpop"
                }));
            }
            (args[args.len() - 1], &args[1..args.len() - 1], &[][..])
        };
        let timeout = std::str::from_utf8(timeout)
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|t| t.is_finite())
            .ok_or_else(|| ReplyError::err("timeout is not a float or out of range"))?;
        if timeout < 0.0 {
            return Err(ReplyError::err("timeout is negative"));
        }
        Ok(Pop {
            cmd,
            name: b(args[0]),
            keys: keys.iter().map(|k| b(k)).collect(),
            timeout,
            rest: rest.iter().map(|a| b(a)).collect(),
        })
    }

    /// The same command on `keys` (indices into [`Pop::keys`]) with
    /// `timeout`.
    pub fn command(&self, keys: &[usize], timeout: &str) -> Bytes {
        let mut buf = BytesMut::with_capacity(64 + keys.iter().map(|&k| self.keys[k].len() + 16).sum::<usize>());
        let numkeys = keys.len().to_string();
        if self.cmd.numkeys() {
            put_header(&mut buf, b'*', 3 + keys.len() + self.rest.len());
            put_bulk(&mut buf, &self.name);
            put_bulk(&mut buf, timeout.as_bytes());
            put_bulk(&mut buf, numkeys.as_bytes());
        } else {
            put_header(&mut buf, b'*', 2 + keys.len());
            put_bulk(&mut buf, &self.name);
        }
        for &k in keys {
            put_bulk(&mut buf, &self.keys[k]);
        }
        if self.cmd.numkeys() {
            for a in &self.rest {
                put_bulk(&mut buf, a);
            }
        } else {
            put_bulk(&mut buf, timeout.as_bytes());
        }
        buf.freeze()
    }

    /// The command that puts back what `reply` (this command's answer, an
    /// element popped) took: to the same end of the list, or with its score.
    /// `None` for an answer that popped nothing (nil, an error).
    pub fn give_back(&self, reply: &Bytes) -> Option<Bytes> {
        let els = reply::elements(reply)?;
        let key = scalar(els.first()?)?;
        let mut args: Vec<Bytes> = Vec::new();
        match self.cmd {
            Cmd::Blpop | Cmd::Brpop => {
                let push = if self.cmd == Cmd::Blpop { "LPUSH" } else { "RPUSH" };
                args.extend([Bytes::from_static(push.as_bytes()), key, scalar(els.get(1)?)?]);
            }
            Cmd::Bzpopmin | Cmd::Bzpopmax => {
                args.extend([
                    Bytes::from_static(b"ZADD"),
                    key,
                    scalar(els.get(2)?)?,
                    scalar(els.get(1)?)?,
                ]);
            }
            Cmd::Blmpop => {
                let left = self.rest.first().is_some_and(|d| d.eq_ignore_ascii_case(b"left"));
                args.push(Bytes::from_static(if left { b"LPUSH" } else { b"RPUSH" }));
                args.push(key);
                // Popped first = nearest the end: pushed back last.
                let popped = reply::elements(els.get(1)?)?;
                for e in popped.iter().rev() {
                    args.push(scalar(e)?);
                }
            }
            Cmd::Bzmpop => {
                args.extend([Bytes::from_static(b"ZADD"), key]);
                for pair in reply::elements(els.get(1)?)? {
                    let pair = reply::elements(&pair)?;
                    args.push(scalar(pair.get(1)?)?);
                    args.push(scalar(pair.first()?)?);
                }
            }
        }
        if args.len() < 3 {
            return None;
        }
        let mut buf = BytesMut::new();
        put_header(&mut buf, b'*', args.len());
        for a in &args {
            put_bulk(&mut buf, a);
        }
        Some(buf.freeze())
    }
}

/// A scalar reply's text: simple, bulk, verbatim, double or integer.
fn scalar(frame: &Bytes) -> Option<Bytes> {
    match frame.first()? {
        b',' | b':' => Some(frame.slice(1..frame.len().checked_sub(2)?)),
        _ => reply::as_bytes(frame),
    }
}

/// Runs of consecutive keys on one shard (`shards[i]`: key i's shard), in
/// key order: tried one after the other, so the first non-empty key in
/// argument order wins, as in Redis.
pub fn runs(shards: &[usize]) -> Vec<(usize, Vec<usize>)> {
    let mut out: Vec<(usize, Vec<usize>)> = Vec::new();
    for (i, &s) in shards.iter().enumerate() {
        match out.last_mut() {
            Some((last, keys)) if *last == s => keys.push(i),
            _ => out.push((s, vec![i])),
        }
    }
    out
}

/// Every shard involved with its keys in argument order, shards in the
/// order of their first key: what each shard waits on.
pub fn by_shard(shards: &[usize]) -> Vec<(usize, Vec<usize>)> {
    let mut out: Vec<(usize, Vec<usize>)> = Vec::new();
    for (i, &s) in shards.iter().enumerate() {
        match out.iter_mut().find(|(x, _)| *x == s) {
            Some((_, keys)) => keys.push(i),
            None => out.push((s, vec![i])),
        }
    }
    out
}

/// The timeout left for the waiting phase, as an argument: 0 stays 0 (for
/// ever); otherwise what is left after `elapsed`, at least a millisecond.
pub fn remaining(timeout: f64, elapsed: Duration) -> String {
    if timeout == 0.0 {
        return "0".into();
    }
    format!("{:.3}", (timeout - elapsed.as_secs_f64()).max(0.001))
}

/// What a try (the command inside MULTI/EXEC, which never blocks) found.
#[derive(Debug, PartialEq, Eq)]
pub enum Tried {
    /// Every key of the run was empty.
    Empty,
    /// The command's answer (an element, or an error such as WRONGTYPE):
    /// the client's answer.
    Answer(Bytes),
}

/// Reads a try's EXEC reply: one element, nil when the keys were empty.
pub fn tried(exec: &Bytes) -> Tried {
    match reply::elements(exec).as_deref() {
        Some([one]) if reply::is_null(one) => Tried::Empty,
        Some([one]) => Tried::Answer(one.clone()),
        _ => Tried::Answer(exec.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pop(args: &[&str]) -> Pop {
        let a: Vec<&[u8]> = args.iter().map(|s| s.as_bytes()).collect();
        Pop::parse(Cmd::of(&args[0].to_lowercase()).unwrap(), &a).unwrap()
    }

    fn text(b: &Bytes) -> String {
        String::from_utf8_lossy(b).replace("\r\n", " ")
    }

    #[test]
    fn commands_are_read_and_rebuilt_for_some_keys() {
        let p = pop(&["BLPOP", "a", "b", "c", "1.5"]);
        assert_eq!(p.keys.len(), 3);
        assert_eq!(p.timeout, 1.5);
        assert_eq!(text(&p.command(&[0, 2], "0")), "*4 $5 BLPOP $1 a $1 c $1 0 ");
        let p = pop(&["blmpop", "0", "2", "a", "b", "RIGHT", "COUNT", "3"]);
        assert_eq!(p.keys.len(), 2);
        assert_eq!(
            text(&p.command(&[1], "2.000")),
            "*7 $6 blmpop $5 2.000 $1 1 $1 b $5 RIGHT $5 COUNT $1 3 "
        );
        let e = |args: &[&str]| {
            let a: Vec<&[u8]> = args.iter().map(|s| s.as_bytes()).collect();
            Pop::parse(Cmd::of(&args[0].to_lowercase()).unwrap(), &a)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            e(&["BLPOP", "a", "b", "x"]),
            "ERR timeout is not a float or out of range"
        );
        assert_eq!(e(&["BLPOP", "a", "b", "-1"]), "ERR timeout is negative");
        assert_eq!(
            e(&["BLMPOP", "0", "0", "a", "LEFT"]),
            "ERR numkeys should be greater than 0"
        );
        assert_eq!(e(&["BZMPOP", "0", "3", "a", "MIN"]), "ERR syntax error");
    }

    #[test]
    fn keys_are_tried_in_runs_and_waited_on_per_shard() {
        // Keys on shards 1, 1, 0, 1: a run per change of shard.
        assert_eq!(runs(&[1, 1, 0, 1]), vec![(1, vec![0, 1]), (0, vec![2]), (1, vec![3])]);
        assert_eq!(by_shard(&[1, 1, 0, 1]), vec![(1, vec![0, 1, 3]), (0, vec![2])]);
        assert_eq!(remaining(0.0, Duration::from_secs(3)), "0");
        assert_eq!(remaining(1.0, Duration::from_millis(250)), "0.750");
        assert_eq!(remaining(1.0, Duration::from_secs(2)), "0.001");
    }

    #[test]
    fn a_try_is_empty_or_the_answer() {
        assert_eq!(tried(&Bytes::from_static(b"*1\r\n*-1\r\n")), Tried::Empty);
        assert_eq!(tried(&Bytes::from_static(b"*1\r\n_\r\n")), Tried::Empty);
        let got = Bytes::from_static(b"*1\r\n*2\r\n$1\r\nq\r\n$1\r\nx\r\n");
        assert_eq!(
            tried(&got),
            Tried::Answer(Bytes::from_static(b"*2\r\n$1\r\nq\r\n$1\r\nx\r\n"))
        );
        let wrong = Bytes::from_static(b"*1\r\n-WRONGTYPE no\r\n");
        assert_eq!(tried(&wrong), Tried::Answer(Bytes::from_static(b"-WRONGTYPE no\r\n")));
        let abort = Bytes::from_static(b"-EXECABORT x\r\n");
        assert_eq!(tried(&abort), Tried::Answer(abort.clone()));
    }

    #[test]
    fn what_was_popped_goes_back_where_it_was() {
        let back =
            |args: &[&str], reply: &'static [u8]| pop(args).give_back(&Bytes::from_static(reply)).map(|b| text(&b));
        assert_eq!(
            back(&["BLPOP", "a", "0"], b"*2\r\n$1\r\na\r\n$1\r\nx\r\n").unwrap(),
            "*3 $5 LPUSH $1 a $1 x "
        );
        assert_eq!(
            back(&["BRPOP", "a", "0"], b"*2\r\n$1\r\na\r\n$1\r\nx\r\n").unwrap(),
            "*3 $5 RPUSH $1 a $1 x "
        );
        // RESP2 and RESP3 scores.
        assert_eq!(
            back(&["BZPOPMIN", "z", "0"], b"*3\r\n$1\r\nz\r\n$1\r\nm\r\n$3\r\n1.5\r\n").unwrap(),
            "*4 $4 ZADD $1 z $3 1.5 $1 m "
        );
        assert_eq!(
            back(&["BZPOPMAX", "z", "0"], b"*3\r\n$1\r\nz\r\n$1\r\nm\r\n,-inf\r\n").unwrap(),
            "*4 $4 ZADD $1 z $4 -inf $1 m "
        );
        // BLMPOP LEFT popped x then y (x was the head): y pushed first, then x.
        assert_eq!(
            back(
                &["BLMPOP", "0", "1", "l", "LEFT", "COUNT", "2"],
                b"*2\r\n$1\r\nl\r\n*2\r\n$1\r\nx\r\n$1\r\ny\r\n"
            )
            .unwrap(),
            "*4 $5 LPUSH $1 l $1 y $1 x "
        );
        assert_eq!(
            back(
                &["BLMPOP", "0", "1", "l", "right"],
                b"*2\r\n$1\r\nl\r\n*1\r\n$1\r\nx\r\n"
            )
            .unwrap(),
            "*3 $5 RPUSH $1 l $1 x "
        );
        assert_eq!(
            back(
                &["BZMPOP", "0", "1", "z", "MIN", "COUNT", "2"],
                b"*2\r\n$1\r\nz\r\n*2\r\n*2\r\n$1\r\na\r\n$1\r\n1\r\n*2\r\n$1\r\nb\r\n,2.5\r\n"
            )
            .unwrap(),
            "*6 $4 ZADD $1 z $1 1 $1 a $3 2.5 $1 b "
        );
        assert_eq!(back(&["BLPOP", "a", "0"], b"*-1\r\n"), None);
        assert_eq!(back(&["BLPOP", "a", "0"], b"-ERR x\r\n"), None);
    }
}
