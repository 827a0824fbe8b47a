//! Opening a connection to a backend: the address (asking the Sentinels
//! first when the endpoint follows a master and has none or was marked
//! stale), connect, and the handshake (AUTH or HELLO, PING, `INFO server`
//! for the server's run_id, and `ROLE` when the endpoint expects a role),
//! all within the connect timeout; over TLS first when the backend has
//! `tls` (the handshake's failure is the connection's).

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::endpoint::Role;
use super::{BackendSpec, Identity};
use crate::error::{BackendError, BackendErrorKind};
use crate::protocol::Protocol;
use crate::protocol::reply::{self, ReplyScanner};
use crate::protocol::request::Request;
use crate::tls::stream::{BackendStream, send};

/// Resolves (again, every time: container IPs change), connects and runs the
/// handshake. Any failure is [`BackendErrorKind::Unavailable`]: nothing of a
/// client's was sent yet. A failure on a Sentinel-followed endpoint marks it
/// stale, so the next attempt asks the Sentinels where the master is.
pub(crate) async fn connect(
    spec: &BackendSpec,
    identity: &Identity,
    proto: Protocol,
) -> Result<BackendStream, BackendError> {
    connect_to(spec, identity, proto).await.map(|(s, _)| s)
}

/// As [`connect`], also returning the address connected to.
pub(crate) async fn connect_to(
    spec: &BackendSpec,
    identity: &Identity,
    proto: Protocol,
) -> Result<(BackendStream, Arc<String>), BackendError> {
    let r = connect_once(spec, identity, proto).await;
    if r.is_err() {
        spec.endpoint.mark_stale();
    }
    spec.endpoint.set_up(r.is_ok());
    r
}

async fn connect_once(
    spec: &BackendSpec,
    identity: &Identity,
    proto: Protocol,
) -> Result<(BackendStream, Arc<String>), BackendError> {
    let unavailable = |e: std::io::Error| BackendError::io(BackendErrorKind::Unavailable, &spec.name, e);
    let refused = |detail: String| BackendError::new(BackendErrorKind::Unavailable, &spec.name, detail);
    let (addr, moved) = spec
        .endpoint
        .resolve(&spec.name, spec.connect_timeout)
        .await
        .map_err(refused)?;
    if moved {
        identity.mark_restarted(&spec.name, "Sentinel failover to another master");
    }
    let expect = spec.endpoint.expect();
    let attempt = async {
        let tcp = TcpStream::connect(addr.as_str()).await.map_err(unavailable)?;
        tcp.set_nodelay(true).map_err(unavailable)?;
        let mut stream = match &spec.tls {
            None => BackendStream::Plain(tcp),
            Some(t) => BackendStream::Tls(Box::new(t.connect(&addr, tcp).await.map_err(refused)?)),
        };
        let hs = handshake(spec, proto, expect.is_some());
        let mut out = Vec::new();
        for r in &hs {
            out.extend_from_slice(&r.raw);
        }
        send(&mut stream, &out).await.map_err(unavailable)?;
        let mut buf = BytesMut::with_capacity(1024);
        let mut sc = ReplyScanner::default();
        let mut answered = 0;
        // INFO server, then ROLE if asked, are the last requests.
        let info_at = hs.len() - 1 - usize::from(expect.is_some());
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
                if answered == info_at {
                    let info = reply::as_bytes(&frame).unwrap_or_default();
                    let run_id = String::from_utf8_lossy(&info)
                        .lines()
                        .find_map(|l| l.strip_prefix("run_id:").map(|v| v.trim().to_string()));
                    if let Some(run_id) = run_id {
                        identity.observe(&spec.name, &run_id);
                    }
                } else if answered > info_at
                    && let Some(want) = expect
                {
                    check_role(spec, &addr, want, &frame).map_err(refused)?;
                }
                answered += 1;
            }
        }
        Ok(stream)
    };
    let attempt = async { attempt.await.map(|s| (s, addr.clone())) };
    match timeout(spec.connect_timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(refused(format!(
            "no connection to {addr} within {} ms",
            spec.connect_timeout.as_millis()
        ))),
    }
}

/// Checks the first word of a `ROLE` reply against the role the endpoint
/// expects, counting the check (and a refusal) for INFO.
fn check_role(spec: &BackendSpec, addr: &str, want: Role, frame: &bytes::Bytes) -> Result<(), String> {
    use std::sync::atomic::Ordering::Relaxed;
    let ep = &spec.endpoint;
    ep.role_checks.fetch_add(1, Relaxed);
    let role = reply::elements(frame)
        .and_then(|e| e.first().and_then(reply::as_bytes))
        .map(|b| String::from_utf8_lossy(&b).to_ascii_lowercase())
        .unwrap_or_default();
    if role == want.word() {
        return Ok(());
    }
    ep.role_refusals.fetch_add(1, Relaxed);
    let role = if role.is_empty() { "unknown" } else { role.as_str() };
    Err(match want {
        Role::Master => format!("{addr} says it is a {role}, not a master: nothing is sent to it"),
        Role::Replica => format!("{addr} says it is a {role}, not a replica: not read from"),
    })
}

/// The handshake's requests: credentials and protocol, PING, INFO server,
/// and ROLE when `role`.
fn handshake(spec: &BackendSpec, proto: Protocol, role: bool) -> Vec<Request> {
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
    if role {
        hs.push(Request::from_args(&["ROLE"]));
    }
    hs
}
