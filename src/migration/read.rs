//! Reads through the old owner during a migration, instead of moving the key.
//!
//! A read-only command on one key whose owner changes (the router's
//! [`Plan::ReadThrough`](crate::router::Plan::ReadThrough)) does not
//! `MIGRATE` the key first (as writes do, see [`super`]): the session sends
//! the old owner, as one job,
//!
//! ```text
//! MULTI; EXISTS key; <the command>; EXEC
//! ```
//!
//! and, if `EXISTS` answered 1, the command's reply inside `EXEC` is the
//! answer ([`Read::Current`]); if 0, the command runs on the new owner
//! ([`Read::Gone`]). One round trip to a server that does not block on
//! anything, where a move on demand costs a `MIGRATE` (which holds the old
//! owner until the new one has restored the key) and then the command.
//!
//! Why the old owner's reply is current when `EXISTS` answers 1. On the old
//! owner the transaction runs atomically, so `EXISTS` and the command see the
//! same state: the key is there, at time `t` of the old owner's order.
//! - Every write to a moving key through the proxy moves the key first
//!   (parks, [`super`]): its `MIGRATE` runs on the old owner, and the write
//!   runs on the new owner only once that `MIGRATE` answered. `MIGRATE`
//!   restores the key on the target and deletes it from the source within
//!   that one command, so after it the old owner no longer has the key (and
//!   nothing the proxy sends puts it back: these reads write nothing). The
//!   key being on the old owner at `t` thus means no write's `MIGRATE` ran
//!   before `t`, so no write to the key has run on the new owner yet: the
//!   old owner's value is the latest one.
//! - A `MIGRATE` that found the key already on the target (`BUSYKEY`) is
//!   followed by a `DEL` on the source before the write runs; the target's
//!   copy then came from an earlier `MIGRATE` that timed out after its copy
//!   (the same value: a write whose move failed was answered TRYAGAIN, not
//!   run). So until the write runs, both copies are the same value.
//! - A write the client pipelined *after* this read is not run before it:
//!   the read holds its reply slot as a parked request, and later requests
//!   of the client wait behind it (they park, and are released in order).
//!
//! Why running the command on the new owner is right when `EXISTS` answers
//! 0: at `t` the key had either already moved (so the new owner has it, or
//! a write that came after the move has changed or deleted it there), or it
//! existed nowhere (a write may have created it on the new owner since).
//! Either way the new owner holds the latest state from `t` on: the read
//! runs there after `t`, and the migrator moving the key in between (after
//! `t`) is not possible, since it was not on the old owner at `t`. A write
//! that completed before this read was sent had moved the key off the old
//! owner before `t`, so the read sees it.
//!
//! What this does not cover, as the rest of the migration: a key written
//! on the new owner directly (not through the proxy) while the old owner
//! still has it reads the old owner's copy until the key moves (the
//! migrator then keeps the new owner's, [`super`]); a write sent under the
//! previous topology and still in flight at the reload may land on the old
//! owner after the key moved.

use bytes::{Bytes, BytesMut};

use crate::backend::BackendResult;
use crate::protocol::reply;
use crate::protocol::request::{put_bulk, put_header};

/// The commands one read-through sends: MULTI, EXISTS, the command, EXEC.
pub const FRAMES: u32 = 4;

/// `MULTI; EXISTS key; <req>; EXEC` (`req`: the client's command as RESP).
pub fn request(key: &[u8], req: &[u8]) -> Bytes {
    const MULTI: &[u8] = b"*1\r\n$5\r\nMULTI\r\n";
    const EXEC: &[u8] = b"*1\r\n$4\r\nEXEC\r\n";
    let mut buf = BytesMut::with_capacity(MULTI.len() + 32 + key.len() + req.len() + EXEC.len());
    buf.extend_from_slice(MULTI);
    put_header(&mut buf, b'*', 2);
    put_bulk(&mut buf, b"EXISTS");
    put_bulk(&mut buf, key);
    buf.extend_from_slice(req);
    buf.extend_from_slice(EXEC);
    buf.freeze()
}

/// What a read-through's `EXEC` answered.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// The key was on the old owner: the command's reply there (an error
    /// reply such as WRONGTYPE included) is the answer.
    Current(Bytes),
    /// The key was not on the old owner: run the command on the new one.
    Gone,
    /// The transaction did not run (the old owner unreachable, loading, ...).
    Failed(String),
}

/// Reads `EXEC`'s reply: `*2` of `:1`/`:0` and the command's reply.
pub fn outcome(r: &BackendResult) -> Read {
    let frame = match r {
        Err(e) => return Read::Failed(e.to_string()),
        Ok(f) => f,
    };
    if reply::is_error(frame) {
        return Read::Failed(String::from_utf8_lossy(&frame[1..]).trim_end().to_string());
    }
    match reply::elements(frame).as_deref() {
        Some([exists, answer]) if &exists[..] == b":1\r\n" => Read::Current(answer.clone()),
        Some([exists, _]) if &exists[..] == b":0\r\n" => Read::Gone,
        _ => Read::Failed(format!(
            "unexpected reply to EXEC: {}",
            String::from_utf8_lossy(&frame[..frame.len().min(64)]).trim_end()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_transaction_wraps_the_command_as_sent() {
        let get = b"*2\r\n$3\r\nGET\r\n$3\r\nk:1\r\n";
        assert_eq!(
            &request(b"k:1", get)[..],
            &b"*1\r\n$5\r\nMULTI\r\n*2\r\n$6\r\nEXISTS\r\n$3\r\nk:1\r\n*2\r\n$3\r\nGET\r\n$3\r\nk:1\r\n*1\r\n$4\r\nEXEC\r\n"[..]
        );
    }

    #[test]
    fn exec_replies() {
        let ok = |s: &'static [u8]| -> BackendResult { Ok(Bytes::from_static(s)) };
        assert_eq!(
            outcome(&ok(b"*2\r\n:1\r\n$2\r\nv1\r\n")),
            Read::Current(Bytes::from_static(b"$2\r\nv1\r\n"))
        );
        // An aggregate reply, in RESP3, and an error inside EXEC are answers too.
        assert_eq!(
            outcome(&ok(b"*2\r\n:1\r\n%1\r\n+f\r\n:2\r\n")),
            Read::Current(Bytes::from_static(b"%1\r\n+f\r\n:2\r\n"))
        );
        assert_eq!(
            outcome(&ok(b"*2\r\n:1\r\n-WRONGTYPE Operation\r\n")),
            Read::Current(Bytes::from_static(b"-WRONGTYPE Operation\r\n"))
        );
        assert_eq!(outcome(&ok(b"*2\r\n:0\r\n$-1\r\n")), Read::Gone);
        assert_eq!(outcome(&ok(b"*2\r\n:0\r\n_\r\n")), Read::Gone);
        assert_eq!(
            outcome(&ok(b"-EXECABORT Transaction discarded\r\n")),
            Read::Failed("EXECABORT Transaction discarded".into())
        );
        assert!(matches!(outcome(&ok(b"*-1\r\n")), Read::Failed(_)));
        assert!(matches!(outcome(&ok(b"*1\r\n:1\r\n")), Read::Failed(_)));
        let down: BackendResult = Err(crate::backend::BackendError::new(
            crate::backend::BackendErrorKind::Unavailable,
            &"a".into(),
            "connection refused",
        ));
        assert_eq!(
            outcome(&down),
            Read::Failed("ERR backend a unavailable: connection refused".into())
        );
    }
}
