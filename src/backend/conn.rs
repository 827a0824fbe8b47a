//! Opening a connection to a backend: resolve, connect, and the handshake
//! (AUTH or HELLO, PING, and `INFO server` for the server's run_id), all
//! within the connect timeout.

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::{BackendSpec, Identity};
use crate::error::{BackendError, BackendErrorKind};
use crate::protocol::Protocol;
use crate::protocol::reply::{self, ReplyScanner};
use crate::protocol::request::Request;

/// Resolves (again, every time: container IPs change), connects and runs the
/// handshake. Any failure is [`BackendErrorKind::Unavailable`]: nothing of a
/// client's was sent yet.
pub(crate) async fn connect(
    spec: &BackendSpec,
    identity: &Identity,
    proto: Protocol,
) -> Result<TcpStream, BackendError> {
    let unavailable = |e: std::io::Error| BackendError::io(BackendErrorKind::Unavailable, &spec.name, e);
    let refused = |detail: String| BackendError::new(BackendErrorKind::Unavailable, &spec.name, detail);
    let attempt = async {
        let mut stream = TcpStream::connect(spec.addr.as_str()).await.map_err(unavailable)?;
        stream.set_nodelay(true).map_err(unavailable)?;
        let hs = handshake(spec, proto);
        let mut out = Vec::new();
        for r in &hs {
            out.extend_from_slice(&r.raw);
        }
        stream.write_all(&out).await.map_err(unavailable)?;
        let mut buf = BytesMut::with_capacity(1024);
        let mut sc = ReplyScanner::default();
        let mut answered = 0;
        while answered < hs.len() {
            if stream.read_buf(&mut buf).await.map_err(unavailable)? == 0 {
                return Err(refused("connection closed during handshake".to_string()));
            }
            while let Some(n) = sc.next_frame(&buf).map_err(|e| refused(e.to_string()))? {
                let frame = buf.split_to(n).freeze();
                if reply::is_error(&frame) {
                    let text = String::from_utf8_lossy(&frame[1..]).trim_end().to_string();
                    return Err(refused(format!("handshake refused: {text}")));
                }
                answered += 1;
                if answered == hs.len() {
                    let info = reply::as_bytes(&frame).unwrap_or_default();
                    let run_id = String::from_utf8_lossy(&info)
                        .lines()
                        .find_map(|l| l.strip_prefix("run_id:").map(|v| v.trim().to_string()));
                    if let Some(run_id) = run_id {
                        identity.observe(&spec.name, &run_id);
                    }
                }
            }
        }
        Ok(stream)
    };
    match timeout(spec.connect_timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(refused(format!(
            "no connection within {} ms",
            spec.connect_timeout.as_millis()
        ))),
    }
}

/// The handshake's requests: credentials and protocol, PING, INFO server.
fn handshake(spec: &BackendSpec, proto: Protocol) -> Vec<Request> {
    let mut hs: Vec<Request> = Vec::new();
    match (proto, &spec.password) {
        (Protocol::Resp3, Some(pw)) => {
            let user = spec.username.as_deref().unwrap_or("default");
            hs.push(Request::from_args(&["HELLO", "3", "AUTH", user, pw]));
        }
        (Protocol::Resp3, None) => hs.push(Request::from_args(&["HELLO", "3"])),
        (Protocol::Resp2, Some(pw)) => match &spec.username {
            Some(u) => hs.push(Request::from_args(&["AUTH", u, pw])),
            None => hs.push(Request::from_args(&["AUTH", pw])),
        },
        (Protocol::Resp2, None) => {}
    }
    hs.push(Request::from_args(&["PING"]));
    hs.push(Request::from_args(&["INFO", "server"]));
    hs
}
