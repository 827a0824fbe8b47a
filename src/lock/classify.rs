//! How a command on lock keys is served: an acquisition, a majority vote,
//! a TTL read, a script, or a fencing-token lookup ([`Op`]). Pure: no I/O.

use bytes::Bytes;

use super::group::LockGroup;
use crate::error::ReplyError;

/// What to answer when the members do not agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// A null reply (GET, GETDEL, SET XX).
    Nil,
    /// `:0` (EXISTS, DEL, PEXPIRE ...).
    Zero,
    /// `+none` (TYPE).
    NoneType,
    /// Scripts: `:0` if any member answered an integer, else null; a release
    /// or extend script then reports "not owned".
    Script,
}

/// How a command on lock keys is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `SET k token NX [PX|EX]` or `SHARDIS.LOCK k token ms` (`fence_reply`).
    Acquire {
        key: Bytes,
        token: Bytes,
        ttl_ms: Option<u64>,
        fence_reply: bool,
    },
    /// Sent as is to every member; the majority's reply.
    Majority(Fallback),
    /// PTTL / TTL: the time until fewer than a majority hold the key.
    Ttl,
    /// EVALSHA: as `Majority(Script)`, with NOSCRIPT handled per member.
    EvalSha { sha: String },
    /// `SHARDIS.FENCE key token`.
    FenceOf { key: Bytes, token: Bytes },
}

/// Decides how a command whose keys are all lock keys is served. `name` is
/// the command table's name (lowercase). `Err` is the error reply.
pub fn classify(name: &str, args: &[&[u8]]) -> Result<Op, ReplyError> {
    Ok(match name {
        "set" => return classify_set(args),
        "get" | "getdel" => Op::Majority(Fallback::Nil),
        "exists" | "del" | "unlink" | "touch" | "strlen" | "pexpire" | "expire" | "pexpireat" | "expireat"
        | "persist" => Op::Majority(Fallback::Zero),
        "type" => Op::Majority(Fallback::NoneType),
        "pttl" | "ttl" => Op::Ttl,
        "eval" | "eval_ro" => Op::Majority(Fallback::Script),
        "evalsha" | "evalsha_ro" => Op::EvalSha {
            sha: String::from_utf8_lossy(args.get(1).copied().unwrap_or_default()).to_ascii_lowercase(),
        },
        _ => {
            return Err(ReplyError::err(format!(
                "shardis: '{}' is not supported on lock keys (redlock.keys); use SET NX PX, GET, PTTL, PEXPIRE, DEL or EVAL/EVALSHA",
                name.replace('|', " ")
            )));
        }
    })
}

/// SET on a lock key: with NX it is an acquisition, otherwise a majority write.
fn classify_set(args: &[&[u8]]) -> Result<Op, ReplyError> {
    let (mut nx, mut xx, mut get, mut keepttl) = (false, false, false, false);
    let mut expiry: Option<(&'static str, i64)> = None;
    let mut i = 3;
    while i < args.len() {
        let a = args[i].to_ascii_uppercase();
        match a.as_slice() {
            b"NX" if !xx => nx = true,
            b"XX" if !nx => xx = true,
            b"GET" => get = true,
            b"KEEPTTL" if expiry.is_none() => keepttl = true,
            b"EX" | b"PX" | b"EXAT" | b"PXAT" if expiry.is_none() && !keepttl => {
                let v = args.get(i + 1).ok_or_else(ReplyError::syntax)?;
                let n = crate::protocol::request::parse_i64(v)
                    .ok_or_else(|| ReplyError::err("value is not an integer or out of range"))?;
                if n <= 0 {
                    return Err(ReplyError::err("invalid expire time in 'set' command"));
                }
                let kind = match a.as_slice() {
                    b"EX" => "ex",
                    b"PX" => "px",
                    b"EXAT" => "exat",
                    _ => "pxat",
                };
                expiry = Some((kind, n));
                i += 1;
            }
            _ => return Err(ReplyError::syntax()),
        }
        i += 1;
    }
    if !nx {
        return Ok(Op::Majority(Fallback::Nil));
    }
    if get {
        return Err(ReplyError::err("shardis: SET NX GET is not supported on lock keys"));
    }
    let ttl_ms = match expiry {
        None if keepttl => {
            return Err(ReplyError::err(
                "shardis: a lock acquisition takes PX or EX, not KEEPTTL",
            ));
        }
        None => None,
        Some(("px", ms)) => Some(ms as u64),
        Some(("ex", s)) => Some(
            (s as u64)
                .checked_mul(1000)
                .ok_or_else(|| ReplyError::err("invalid expire time in 'set' command"))?,
        ),
        Some(_) => {
            return Err(ReplyError::err(
                "shardis: a lock acquisition takes PX or EX, not EXAT/PXAT",
            ));
        }
    };
    Ok(Op::Acquire {
        key: Bytes::copy_from_slice(args[1]),
        token: Bytes::copy_from_slice(args[2]),
        ttl_ms,
        fence_reply: false,
    })
}

/// Proxy commands of the lock family: `SHARDIS.LOCK key token ms` acquires
/// and answers `[fencing token, validity ms]` (nil when not granted);
/// `SHARDIS.FENCE key token` answers the fencing token of the live grant of
/// `key` to `token` made by this proxy (nil if none).
pub fn classify_proxy_command(name: &[u8], args: &[&[u8]], group: &LockGroup) -> Result<Op, ReplyError> {
    let lower = name.to_ascii_lowercase();
    let (op, arity) = match lower.as_slice() {
        b"shardis.lock" => ("shardis.lock", 4),
        b"shardis.fence" => ("shardis.fence", 3),
        _ => {
            return Err(ReplyError::err(format!(
                "unknown command '{}', with args beginning with: ",
                crate::command::printable(name, 128)
            )));
        }
    };
    if args.len() != arity {
        return Err(ReplyError::err(format!("wrong number of arguments for '{op}' command")));
    }
    if !group.enabled() {
        return Err(ReplyError::err(
            "shardis: Redlock is off (redlock.keys is empty or the lock group has fewer than 3 members)",
        ));
    }
    if !group.is_lock_key(args[1]) {
        return Err(ReplyError::err(format!(
            "shardis: '{}' is not in the lock namespace (redlock.keys)",
            crate::command::printable(args[1], 128)
        )));
    }
    let key = Bytes::copy_from_slice(args[1]);
    let token = Bytes::copy_from_slice(args[2]);
    if arity == 3 {
        return Ok(Op::FenceOf { key, token });
    }
    let ttl = crate::protocol::request::parse_i64(args[3])
        .filter(|&n| n > 0)
        .ok_or_else(|| ReplyError::err("invalid expire time in 'shardis.lock' command"))?;
    Ok(Op::Acquire {
        key,
        token,
        ttl_ms: Some(ttl as u64),
        fence_reply: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::group::tests::group;

    fn args(s: &str) -> Vec<&[u8]> {
        s.split(' ').map(str::as_bytes).collect()
    }

    #[test]
    fn set_forms() {
        let acq = |s: &str| classify("set", &args(s));
        assert_eq!(
            acq("SET lock:a t NX PX 3000"),
            Ok(Op::Acquire {
                key: "lock:a".into(),
                token: "t".into(),
                ttl_ms: Some(3000),
                fence_reply: false
            })
        );
        assert_eq!(
            acq("set lock:a t px 3000 nx"),
            Ok(Op::Acquire {
                key: "lock:a".into(),
                token: "t".into(),
                ttl_ms: Some(3000),
                fence_reply: false
            })
        );
        assert_eq!(
            acq("SET lock:a t EX 3 NX"),
            Ok(Op::Acquire {
                key: "lock:a".into(),
                token: "t".into(),
                ttl_ms: Some(3000),
                fence_reply: false
            })
        );
        assert!(matches!(acq("SET lock:a t NX"), Ok(Op::Acquire { ttl_ms: None, .. })));
        assert_eq!(acq("SET lock:a t PX 10"), Ok(Op::Majority(Fallback::Nil)));
        assert_eq!(acq("SET lock:a t XX"), Ok(Op::Majority(Fallback::Nil)));
        assert_eq!(acq("SET lock:a t NX XX").unwrap_err().to_string(), "ERR syntax error");
        assert_eq!(acq("SET lock:a t NX PX").unwrap_err().to_string(), "ERR syntax error");
        assert_eq!(
            acq("SET lock:a t NX PX 0").unwrap_err().to_string(),
            "ERR invalid expire time in 'set' command"
        );
        assert_eq!(
            acq("SET lock:a t NX PX x").unwrap_err().to_string(),
            "ERR value is not an integer or out of range"
        );
        assert!(
            acq("SET lock:a t NX PXAT 5")
                .unwrap_err()
                .to_string()
                .contains("PX or EX")
        );
        assert!(acq("SET lock:a t NX GET").unwrap_err().to_string().contains("NX GET"));
    }

    #[test]
    fn other_commands() {
        assert_eq!(classify("get", &args("GET lock:a")), Ok(Op::Majority(Fallback::Nil)));
        assert_eq!(classify("pttl", &args("PTTL lock:a")), Ok(Op::Ttl));
        assert_eq!(
            classify("evalsha", &args("EVALSHA ABC 1 lock:a t")),
            Ok(Op::EvalSha { sha: "abc".into() })
        );
        assert!(
            classify("incr", &args("INCR lock:a"))
                .unwrap_err()
                .to_string()
                .contains("not supported on lock keys")
        );
    }

    #[test]
    fn proxy_commands() {
        let g = group(&["lock:*"], &["a", "b", "c"]);
        assert!(matches!(
            classify_proxy_command(b"SHARDIS.LOCK", &args("SHARDIS.LOCK lock:x t 1000"), &g),
            Ok(Op::Acquire {
                ttl_ms: Some(1000),
                fence_reply: true,
                ..
            })
        ));
        assert!(matches!(
            classify_proxy_command(b"shardis.fence", &args("shardis.fence lock:x t"), &g),
            Ok(Op::FenceOf { .. })
        ));
        assert!(
            classify_proxy_command(b"shardis.lock", &args("shardis.lock data t 10"), &g)
                .unwrap_err()
                .to_string()
                .contains("lock namespace")
        );
        assert!(
            classify_proxy_command(b"shardis.lock", &args("shardis.lock lock:x t"), &g)
                .unwrap_err()
                .to_string()
                .contains("wrong number")
        );
        assert!(
            classify_proxy_command(b"shardis.nope", &args("shardis.nope"), &g)
                .unwrap_err()
                .to_string()
                .starts_with("ERR unknown command")
        );
        let off = group(&["lock:*"], &[]);
        assert!(
            classify_proxy_command(b"shardis.lock", &args("shardis.lock lock:x t 5"), &off)
                .unwrap_err()
                .to_string()
                .contains("off")
        );
    }
}
