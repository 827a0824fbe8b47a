//! The Redis wire protocol: client requests in ([`request`]), backend replies
//! framed ([`reply`]), and replies the proxy writes itself ([`encode`]).

pub mod encode;
pub mod reply;
pub mod request;

pub use encode::Encoder;
pub use request::{Limits, ProtocolError, Request, RequestParser};

/// The protocol a client negotiated with `HELLO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    #[default]
    Resp2,
    Resp3,
}
