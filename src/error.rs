//! Typed errors: what a client is told ([`ReplyError`]) and why a backend
//! could not answer ([`BackendError`]).
//!
//! A reply error has a [`ErrorKind`], the first word of a Redis error reply,
//! which clients match on (`CROSSSHARD`, `TRYAGAIN`, `NOPERM`, `EXECABORT` ...),
//! and encodes itself. A backend error knows its shard, whether the request
//! may have reached the server (so whether a retry is safe) and its cause.
//! Neither is a `String`: the paths a client's reply comes from keep the kind
//! to the end, and only [`ReplyError::encode`] turns it into bytes.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use crate::protocol::Encoder;

/// The first word of an error reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// `ERR`: the generic kind.
    Err,
    /// Keys of one request live on different shards.
    CrossShard,
    /// Retry later (a key is moving between shards).
    TryAgain,
    /// Not allowed for this connection.
    NoPerm,
    /// Authentication required.
    NoAuth,
    /// Wrong password.
    WrongPass,
    /// EXEC of a transaction that could not be queued.
    ExecAbort,
    /// HELLO with a protocol version the proxy does not speak.
    NoProto,
}

impl ErrorKind {
    pub fn prefix(self) -> &'static str {
        match self {
            ErrorKind::Err => "ERR",
            ErrorKind::CrossShard => "CROSSSHARD",
            ErrorKind::TryAgain => "TRYAGAIN",
            ErrorKind::NoPerm => "NOPERM",
            ErrorKind::NoAuth => "NOAUTH",
            ErrorKind::WrongPass => "WRONGPASS",
            ErrorKind::ExecAbort => "EXECABORT",
            ErrorKind::NoProto => "NOPROTO",
        }
    }
}

/// An error reply for the client: a kind and the text after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyError {
    kind: ErrorKind,
    detail: Cow<'static, str>,
}

impl ReplyError {
    pub fn new(kind: ErrorKind, detail: impl Into<Cow<'static, str>>) -> ReplyError {
        ReplyError {
            kind,
            detail: detail.into(),
        }
    }

    /// `ERR <detail>`.
    pub fn err(detail: impl Into<Cow<'static, str>>) -> ReplyError {
        ReplyError::new(ErrorKind::Err, detail)
    }

    /// `ERR syntax error`.
    pub fn syntax() -> ReplyError {
        ReplyError::err("syntax error")
    }

    /// Redis's reply to a wrong argument count.
    pub fn wrong_arity(name: &str) -> ReplyError {
        ReplyError::err(format!(
            "wrong number of arguments for '{}' command",
            name.replace('|', " ")
        ))
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn detail(&self) -> &str {
        &self.detail
    }

    /// Writes the reply in the client's protocol.
    pub fn encode(&self, enc: &mut Encoder<'_>) {
        enc.error_with(self.kind.prefix(), &self.detail);
    }
}

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind.prefix(), self.detail)
    }
}

impl std::error::Error for ReplyError {}

/// Why a backend did not answer a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendErrorKind {
    /// The request was not sent: the shard could not be reached (connect or
    /// handshake failed, or it is between reconnect attempts).
    Unavailable,
    /// The request was sent and no reply came within the command timeout.
    Timeout,
    /// The connection broke with the request written: it may have run.
    ConnectionLost,
    /// The backend sent something that is not RESP, or a reply no request
    /// was waiting for.
    Protocol,
    /// The pool is being dropped (the shard left the topology).
    ShuttingDown,
    /// The proxy did not use this server's answer (a lock member that is not
    /// among the backends, restarted too recently to vote, or lacks a script).
    Excluded,
}

#[derive(Debug)]
struct Inner {
    kind: BackendErrorKind,
    shard: Arc<str>,
    detail: String,
    source: Option<std::io::Error>,
}

/// Why a backend could not answer. Cheap to clone: one failure often fails
/// many requests.
#[derive(Debug, Clone)]
pub struct BackendError(Arc<Inner>);

impl BackendError {
    pub fn new(kind: BackendErrorKind, shard: &Arc<str>, detail: impl Into<String>) -> BackendError {
        BackendError(Arc::new(Inner {
            kind,
            shard: shard.clone(),
            detail: detail.into(),
            source: None,
        }))
    }

    /// An I/O failure, kept as the error's source.
    pub fn io(kind: BackendErrorKind, shard: &Arc<str>, e: std::io::Error) -> BackendError {
        BackendError(Arc::new(Inner {
            kind,
            shard: shard.clone(),
            detail: e.to_string(),
            source: Some(e),
        }))
    }

    pub fn kind(&self) -> BackendErrorKind {
        self.0.kind
    }

    /// The shard (backend name) it came from.
    pub fn shard(&self) -> &str {
        &self.0.shard
    }

    /// What went wrong, without the shard.
    pub fn detail(&self) -> &str {
        &self.0.detail
    }

    /// Whether the request certainly did not reach the server, so sending it
    /// again cannot run it twice.
    pub fn retryable(&self) -> bool {
        matches!(
            self.0.kind,
            BackendErrorKind::Unavailable | BackendErrorKind::ShuttingDown
        )
    }

    /// The error reply a client gets.
    pub fn message(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.0;
        match i.kind {
            BackendErrorKind::ShuttingDown => write!(f, "ERR backend {} is shutting down", i.shard),
            BackendErrorKind::Excluded => f.write_str(&i.detail),
            _ => write!(f, "ERR backend {} unavailable: {}", i.shard, i.detail),
        }
    }
}

impl std::error::Error for BackendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source.as_ref().map(|e| e as _)
    }
}

impl PartialEq for BackendError {
    fn eq(&self, other: &Self) -> bool {
        self.0.kind == other.0.kind && self.0.shard == other.0.shard && self.0.detail == other.0.detail
    }
}

impl Eq for BackendError {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Protocol;
    use bytes::BytesMut;

    #[test]
    fn reply_errors_encode_their_kind() {
        let e = ReplyError::new(ErrorKind::CrossShard, "keys in request don't hash to the same shard");
        let mut b = BytesMut::new();
        e.encode(&mut Encoder::new(&mut b, Protocol::Resp2));
        assert_eq!(&b[..], b"-CROSSSHARD keys in request don't hash to the same shard\r\n");
        assert_eq!(
            ReplyError::wrong_arity("client|id").to_string(),
            "ERR wrong number of arguments for 'client id' command"
        );
    }

    #[test]
    fn backend_errors_name_the_shard_and_say_if_a_retry_is_safe() {
        let shard: Arc<str> = Arc::from("shard-b");
        let down = BackendError::new(BackendErrorKind::Unavailable, &shard, "connection refused");
        assert_eq!(down.to_string(), "ERR backend shard-b unavailable: connection refused");
        assert!(down.retryable());
        let late = BackendError::new(BackendErrorKind::Timeout, &shard, "timed out after 500 ms");
        assert!(!late.retryable(), "a timed-out request may have run");
        let io = BackendError::io(
            BackendErrorKind::ConnectionLost,
            &shard,
            std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset"),
        );
        assert!(std::error::Error::source(&io).is_some());
        assert_eq!(
            BackendError::new(BackendErrorKind::ShuttingDown, &shard, "").to_string(),
            "ERR backend shard-b is shutting down"
        );
    }
}
