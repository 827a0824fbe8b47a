//! MULTI / EXEC / DISCARD, for transactions whose keys all live on one shard.
//!
//! A client's MULTI opens a [`Transaction`] in its session. Each command
//! after it is checked (known, allowed in a transaction, its keys on the same
//! shard as the keys queued before) and queued by the proxy, which answers
//! `+QUEUED` as Redis does. EXEC sends `MULTI`, the queued commands and
//! `EXEC` to that shard as one contiguous batch on one backend connection
//! (a [`crate::backend::Job`] with several reply frames), so no other
//! client's command can land between them on that shared connection, and
//! the client gets EXEC's own reply. A command that cannot be queued gets its
//! error at once and makes EXEC answer `EXECABORT`, as in Redis.
//!
//! The session executes these steps (`session/transaction.rs`); the router
//! decides which step a request is.
//!
//! WATCH: from WATCH until EXEC, DISCARD, UNWATCH or RESET the client has a
//! backend connection of its own on the watched keys' shard (a conversation
//! task, [`crate::backend::Shard::converse`]); WATCH, the client's commands
//! on that shard and the EXEC batch go over it, so the backend's WATCH
//! guards the transaction and EXEC answers nil when a watched key changed.
//! Watched and queued keys must all be on one shard (else CROSSSHARD).
//! Not ordered with the watch connection: the client's split or broadcast
//! commands (MSET, DEL of keys on several shards ...), which take the shared
//! connections, and commands pipelined before WATCH whose replies are not in
//! yet; a client that waits for each reply (redis-py, redis-rs
//! `transaction()`) is not affected.
//!
//! PUBLISH and SPUBLISH inside MULTI are queued by the proxy but not sent in
//! the batch: subscribers listen on the pub/sub shard (PUBLISH) or on the
//! channel's shard (SPUBLISH), not on the transaction's. Once the shard's
//! EXEC has committed (answered an array), each is sent to its shard and
//! its reply (the receivers count) takes its place in EXEC's reply array;
//! when EXEC does not run (DISCARD, EXECABORT, a WATCH that failed) none is
//! sent. They are therefore not atomic with the rest of the transaction: a
//! subscriber may hear the message a moment after the transaction's writes
//! are visible, and a shard that fails then makes that PUBLISH's place an
//! error while the transaction stays committed.
//!
//! Keys on several shards: refused with CROSSSHARD (naming the setting)
//! unless `[crossshard] transactions = "per-shard"`; then each command's own
//! keys must share a shard, and EXEC runs one MULTI/EXEC per shard (see
//! [`crate::spanning`]). While watching, the watched keys stay on one shard
//! and that shard's part goes first, over the WATCH connection.
//!
//! Not offered: commands that do not run on one shard
//! (KEYS, DBSIZE, FLUSHALL ...), lock keys (they live on a quorum), and the
//! proxy's own commands. Limits: at most `limits.max_pipeline` commands and
//! `limits.max_request` bytes per transaction, so a client cannot make the
//! proxy buffer without bound.

use bytes::{Bytes, BytesMut};

use crate::error::{ErrorKind, ReplyError};
use crate::protocol::request::{Request, put_bulk, put_header};

/// What EXEC answers when a command could not be queued.
pub fn execabort() -> ReplyError {
    ReplyError::new(
        ErrorKind::ExecAbort,
        "Transaction discarded because of previous errors.",
    )
}

/// A transaction being queued.
#[derive(Debug, Default)]
pub struct Transaction {
    queued: Vec<Request>,
    /// Every key of every queued command (slices of the requests).
    keys: Vec<Bytes>,
    bytes: usize,
    /// The shard the keys queued so far live on.
    shard: Option<usize>,
    aborted: bool,
    /// PUBLISH / SPUBLISH, sent after EXEC commits.
    publishes: Vec<Publish>,
    /// How many keys each queued command has (its keys in `keys`).
    key_counts: Vec<u32>,
    /// Keys may be on several shards (`crossshard.transactions`).
    spanning: bool,
    /// Opened while watching: every key on the watched shard.
    watched: bool,
}

/// A PUBLISH or SPUBLISH queued in a transaction.
#[derive(Debug)]
pub struct Publish {
    /// Its place among the transaction's commands (in EXEC's reply).
    pub at: usize,
    pub req: Request,
    /// SPUBLISH: sent to the channel's shard, not the pub/sub shard.
    pub sharded: bool,
}

/// A transaction ready to send.
#[derive(Debug)]
pub struct Exec {
    /// `MULTI`, the queued commands, `EXEC`, back to back.
    pub batch: Bytes,
    /// Reply frames the batch produces: one per command plus MULTI's and EXEC's.
    pub frames: u32,
    /// Every key of every command: they pick the shard at send time, and a
    /// running migration moves them first.
    pub keys: Vec<Bytes>,
    /// PUBLISH / SPUBLISH to send once the batch's EXEC has committed.
    pub publishes: Vec<Publish>,
    /// The queued commands (PUBLISH aside), and how many keys each has:
    /// what a transaction over several shards is split from.
    pub commands: Vec<Bytes>,
    pub key_counts: Vec<u32>,
    /// Its keys may be on several shards (`crossshard.transactions`).
    pub spanning: bool,
}

impl Exec {
    /// Each command's shard under `shard_of` (`None` without keys), or the
    /// EXECABORT answer when one command's keys no longer share a shard.
    pub fn command_shards(&self, shard_of: impl Fn(&[u8]) -> usize) -> Result<Vec<Option<usize>>, ReplyError> {
        let mut keys = self.keys.iter();
        let mut out = Vec::with_capacity(self.key_counts.len());
        for &n in &self.key_counts {
            let mut shards = keys.by_ref().take(n as usize).map(|k| shard_of(k));
            let first = shards.next();
            if shards.any(|s| Some(s) != first) {
                return Err(moved_apart());
            }
            out.push(first);
        }
        Ok(out)
    }

    /// Where each sent command (PUBLISH aside) sits among all the queued ones.
    pub fn places(&self) -> Vec<usize> {
        let total = self.commands.len() + self.publishes.len();
        (0..total)
            .filter(|i| !self.publishes.iter().any(|p| p.at == *i))
            .collect()
    }

    /// The shard to send the batch to under `shard_of` (the topology when it
    /// is sent, which may be newer than the one the commands were queued
    /// under): the one all keys live on, 0 without keys, or the EXECABORT
    /// answer when the keys no longer share a shard.
    pub fn shard(&self, shard_of: impl Fn(&[u8]) -> usize) -> Result<usize, ReplyError> {
        let mut shards = self.keys.iter().map(|k| shard_of(k));
        let first = shards.next().unwrap_or(0);
        if shards.any(|s| s != first) {
            return Err(moved_apart());
        }
        Ok(first)
    }
}

fn moved_apart() -> ReplyError {
    ReplyError::new(
        ErrorKind::ExecAbort,
        "shardis: the transaction's keys no longer share a shard (the topology changed); retry",
    )
}

impl Transaction {
    /// A transaction opened while watching keys on `shard`: its commands'
    /// keys must live there too.
    /// Commands queued so far (CLIENT LIST's `multi=`).
    pub fn queued_count(&self) -> usize {
        self.queued.len()
    }

    pub fn on_shard(shard: usize) -> Transaction {
        Transaction {
            shard: Some(shard),
            watched: true,
            ..Transaction::default()
        }
    }

    /// A transaction opened while watching keys on `shard`, whose commands
    /// may be on other shards too (the watched shard's part goes first).
    pub fn on_shard_spanning(shard: usize) -> Transaction {
        Transaction {
            spanning: true,
            ..Transaction::on_shard(shard)
        }
    }

    /// A transaction whose commands may be on several shards
    /// (`crossshard.transactions = "per-shard"`).
    pub fn spanning() -> Transaction {
        Transaction {
            spanning: true,
            ..Transaction::default()
        }
    }

    /// Makes EXEC answer EXECABORT (a command could not be queued).
    pub fn abort(&mut self) {
        self.aborted = true;
    }

    /// Queues `req`, whose keys are `keys`. Refused (and the transaction
    /// aborted) past the size limits or when a key lives on another shard
    /// than those queued before.
    pub fn queue(
        &mut self,
        req: Request,
        keys: Vec<Bytes>,
        shard_of: impl Fn(&[u8]) -> usize,
        max_commands: usize,
        max_bytes: usize,
    ) -> Result<(), ReplyError> {
        self.check_size(&req, max_commands, max_bytes)?;
        let mut own = None;
        for k in &keys {
            let s = shard_of(k);
            match (own, self.shard) {
                (Some(o), _) if o != s && self.spanning => {
                    self.aborted = true;
                    return Err(crate::spanning::command_spans());
                }
                (_, Some(prev)) if prev != s && !self.spanning => {
                    self.aborted = true;
                    return Err(if self.watched {
                        ReplyError::new(
                            ErrorKind::CrossShard,
                            "keys in transaction don't hash to the same shard as the watched keys (WATCH guards one shard)",
                        )
                    } else {
                        crate::spanning::tx_refused()
                    });
                }
                _ => {
                    own = Some(s);
                    self.shard = self.shard.or(Some(s));
                }
            }
        }
        self.bytes += req.raw.len();
        self.queued.push(req);
        self.key_counts.push(keys.len() as u32);
        self.keys.extend(keys);
        Ok(())
    }

    /// Refused (and the transaction aborted) past the size limits.
    fn check_size(&mut self, req: &Request, max_commands: usize, max_bytes: usize) -> Result<(), ReplyError> {
        if self.queued.len() + self.publishes.len() >= max_commands || self.bytes + req.raw.len() > max_bytes {
            self.aborted = true;
            return Err(ReplyError::err(format!(
                "shardis: transaction too large: at most {max_commands} commands and {max_bytes} bytes (limits.max_pipeline, limits.max_request)"
            )));
        }
        Ok(())
    }

    /// Queues a PUBLISH (or, `sharded`, SPUBLISH): sent after EXEC commits.
    pub fn queue_publish(
        &mut self,
        req: Request,
        sharded: bool,
        max_commands: usize,
        max_bytes: usize,
    ) -> Result<(), ReplyError> {
        self.check_size(&req, max_commands, max_bytes)?;
        self.bytes += req.raw.len();
        self.publishes.push(Publish {
            at: self.queued.len() + self.publishes.len(),
            req,
            sharded,
        });
        Ok(())
    }

    /// EXEC: the batch to send (its shard: [`Exec::shard`]), `Ok(None)` for
    /// an empty transaction (EXEC answers an empty array), or EXECABORT.
    pub fn exec(self) -> Result<Option<Exec>, ReplyError> {
        if self.queued.is_empty() && self.publishes.is_empty() && !self.aborted {
            return Ok(None);
        }
        self.batch().map(Some)
    }

    /// EXEC while watching: the batch even when nothing is queued (EXEC
    /// answers nil when a watched key changed), or EXECABORT.
    pub fn batch(self) -> Result<Exec, ReplyError> {
        if self.aborted {
            return Err(execabort());
        }
        let mut buf = BytesMut::with_capacity(self.bytes + 32);
        put_header(&mut buf, b'*', 1);
        put_bulk(&mut buf, b"MULTI");
        for r in &self.queued {
            buf.extend_from_slice(&r.raw);
        }
        put_header(&mut buf, b'*', 1);
        put_bulk(&mut buf, b"EXEC");
        Ok(Exec {
            batch: buf.freeze(),
            frames: self.queued.len() as u32 + 2,
            keys: self.keys,
            publishes: self.publishes,
            commands: self.queued.into_iter().map(|r| r.raw).collect(),
            key_counts: self.key_counts,
            spanning: self.spanning,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(args: &[&str]) -> Request {
        Request::from_args(args)
    }

    fn keys(ks: &[&'static str]) -> Vec<Bytes> {
        ks.iter().map(|k| Bytes::from_static(k.as_bytes())).collect()
    }

    /// Shard by the key's first letter: a..m on 0, the rest on 1.
    fn by_letter(k: &[u8]) -> usize {
        usize::from(k.first().is_some_and(|c| *c > b'm'))
    }

    #[test]
    fn a_transaction_on_one_shard_becomes_one_batch() {
        let mut tx = Transaction::default();
        tx.queue(req(&["SET", "a", "1"]), keys(&["a"]), by_letter, 10, 1000)
            .unwrap();
        tx.queue(req(&["PING"]), vec![], by_letter, 10, 1000).unwrap();
        tx.queue(req(&["INCR", "b"]), keys(&["b"]), by_letter, 10, 1000)
            .unwrap();
        let ex = tx.exec().unwrap().expect("commands queued");
        assert_eq!(ex.shard(by_letter), Ok(0));
        assert_eq!(ex.frames, 5);
        let want = "*1\r\n$5\r\nMULTI\r\n*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\n1\r\n*1\r\n$4\r\nPING\r\n\
                    *2\r\n$4\r\nINCR\r\n$1\r\nb\r\n*1\r\n$4\r\nEXEC\r\n";
        assert_eq!(std::str::from_utf8(&ex.batch).unwrap(), want);
    }

    #[test]
    fn keys_on_two_shards_abort_the_transaction() {
        let mut tx = Transaction::default();
        tx.queue(req(&["SET", "a", "1"]), keys(&["a"]), by_letter, 10, 1000)
            .unwrap();
        let e = tx
            .queue(req(&["SET", "z", "1"]), keys(&["z"]), by_letter, 10, 1000)
            .unwrap_err();
        assert!(e.to_string().starts_with("CROSSSHARD"), "{e}");
        assert_eq!(tx.exec().unwrap_err(), execabort());
    }

    #[test]
    fn limits_abort_and_empty_transactions_are_empty() {
        let mut tx = Transaction::default();
        tx.queue(req(&["SET", "a", "1"]), keys(&["a"]), by_letter, 1, 1000)
            .unwrap();
        let e = tx
            .queue(req(&["SET", "b", "1"]), keys(&["b"]), by_letter, 1, 1000)
            .unwrap_err();
        assert!(e.to_string().contains("too large"), "{e}");
        assert_eq!(tx.exec().unwrap_err(), execabort());
        let mut tx = Transaction::default();
        let e = tx
            .queue(req(&["SET", "a", "1"]), keys(&["a"]), by_letter, 10, 8)
            .unwrap_err();
        assert!(e.to_string().contains("too large"), "{e}");
        assert!(Transaction::default().exec().unwrap().is_none());
        let mut tx = Transaction::default();
        tx.abort();
        assert_eq!(tx.exec().unwrap_err(), execabort());
    }

    #[test]
    fn publishes_are_kept_aside_in_their_place() {
        let mut tx = Transaction::default();
        tx.queue_publish(req(&["PUBLISH", "ch", "m"]), false, 10, 1000).unwrap();
        tx.queue(req(&["SET", "a", "1"]), keys(&["a"]), by_letter, 10, 1000)
            .unwrap();
        tx.queue_publish(req(&["SPUBLISH", "ch", "m"]), true, 10, 1000).unwrap();
        let ex = tx.exec().unwrap().expect("commands queued");
        assert_eq!(ex.frames, 3, "MULTI, SET, EXEC: the publishes are not in the batch");
        let at: Vec<(usize, bool)> = ex.publishes.iter().map(|p| (p.at, p.sharded)).collect();
        assert_eq!(at, [(0, false), (2, true)]);
        // Only a PUBLISH: still a batch (an empty MULTI/EXEC), so WATCH guards it.
        let mut tx = Transaction::default();
        tx.queue_publish(req(&["PUBLISH", "ch", "m"]), false, 10, 1000).unwrap();
        assert_eq!(tx.exec().unwrap().expect("a publish queued").frames, 2);
        // They count against the limits.
        let mut tx = Transaction::default();
        tx.queue_publish(req(&["PUBLISH", "ch", "m"]), false, 1, 1000).unwrap();
        assert!(tx.queue_publish(req(&["PUBLISH", "ch", "m"]), false, 1, 1000).is_err());
        assert_eq!(tx.exec().unwrap_err(), execabort());
    }

    #[test]
    fn with_per_shard_transactions_each_command_keeps_its_keys_on_one_shard() {
        // Off: the refusal names the setting.
        let mut tx = Transaction::default();
        tx.queue(req(&["SET", "a", "1"]), keys(&["a"]), by_letter, 10, 1000)
            .unwrap();
        let e = tx.queue(req(&["SET", "z", "1"]), keys(&["z"]), by_letter, 10, 1000);
        assert!(e.unwrap_err().to_string().contains("crossshard.transactions"));
        // On: commands on several shards queue; one command over two does not.
        let mut tx = Transaction::spanning();
        tx.queue(req(&["SET", "a", "1"]), keys(&["a"]), by_letter, 10, 1000)
            .unwrap();
        tx.queue_publish(req(&["PUBLISH", "ch", "m"]), false, 10, 1000).unwrap();
        tx.queue(req(&["PING"]), vec![], by_letter, 10, 1000).unwrap();
        tx.queue(req(&["RPUSH", "z", "a"]), keys(&["z"]), by_letter, 10, 1000)
            .unwrap();
        let ex = tx.exec().unwrap().expect("commands queued");
        assert!(ex.spanning);
        assert_eq!(ex.command_shards(by_letter), Ok(vec![Some(0), None, Some(1)]));
        assert_eq!(ex.places(), [0, 2, 3], "the PUBLISH is second");
        let mut tx = Transaction::spanning();
        let e = tx.queue(
            req(&["MSET", "a", "1", "z", "2"]),
            keys(&["a", "z"]),
            by_letter,
            10,
            1000,
        );
        assert!(e.unwrap_err().to_string().starts_with("CROSSSHARD keys of one command"));
        assert_eq!(tx.exec().unwrap_err(), execabort());
        // Watching on 0: other shards queue too (the watched part goes first).
        let mut tx = Transaction::on_shard_spanning(0);
        tx.queue(req(&["SET", "z", "1"]), keys(&["z"]), by_letter, 10, 1000)
            .unwrap();
        let mut tx = Transaction::on_shard(0);
        let e = tx.queue(req(&["SET", "z", "1"]), keys(&["z"]), by_letter, 10, 1000);
        assert!(e.unwrap_err().to_string().contains("watched keys"));
    }

    #[test]
    fn a_topology_change_before_exec_is_caught() {
        let mut tx = Transaction::default();
        tx.queue(req(&["SET", "a", "1"]), keys(&["a"]), by_letter, 10, 1000)
            .unwrap();
        tx.queue(req(&["SET", "b", "1"]), keys(&["b"]), by_letter, 10, 1000)
            .unwrap();
        // Now "a" and "b" live apart.
        let ex = tx.exec().unwrap().expect("commands queued");
        let e = ex.shard(|k| usize::from(k == b"b")).unwrap_err();
        assert!(e.to_string().starts_with("EXECABORT"), "{e}");
    }
}
