//! The connection of one subscriber (SUBSCRIBE / PSUBSCRIBE) to the pub/sub
//! shard: a task that writes the (un)subscribe commands the session sends
//! it, answers each with its confirmations (as many frames as the session
//! said the command gets, in order), and passes the messages on.
//!
//! The backend's bytes are framed ([`ReplyScanner`]), never copied blindly:
//! a run of consecutive messages (`message` / `pmessage`, or any other RESP3
//! push) goes to the session as one [`Event::Messages`], a slice of the read
//! buffer, whole frames only; a confirmation answers the command waiting.
//! The messages waiting for the session are bounded in bytes ([`BUDGET`],
//! or one batch larger than that): past it the task stops reading, so a
//! client that does not read its messages makes the shard's
//! `client-output-buffer-limit pubsub` apply, not the proxy's memory grow.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::backend::{BackendError, BackendErrorKind, ReplyTo, Shard};
use crate::protocol::Protocol;
use crate::protocol::reply::ReplyScanner;

/// Batches of messages waiting for the session.
const EVENTS: usize = 64;

/// Bytes of messages waiting for the session (see the module doc).
const BUDGET: usize = 1 << 20;

/// Bytes read from the shard at a time (messages are batched up to this).
const READ: usize = 64 * 1024;

/// A command for the subscriber connection.
pub(super) struct Cmd {
    pub req: Bytes,
    /// How many reply frames it gets (one confirmation per channel named,
    /// per channel held for an UNSUBSCRIBE of all, at least one).
    pub frames: usize,
    pub reply: ReplyTo,
}

/// What the connection tells the session.
pub(super) enum Event {
    /// Whole message frames, as the shard encoded them, in order; their
    /// bytes count against [`BUDGET`] until the permit is dropped.
    Messages(Bytes, OwnedSemaphorePermit),
    /// The connection failed (`connected`: after it was established): the
    /// commands waiting were answered with the error.
    Lost { connected: bool },
}

/// A command waiting for its confirmations.
struct Waiting {
    left: usize,
    got: BytesMut,
    reply: ReplyTo,
}

/// Opens the connection in a task of its own. When the session drops the
/// sender (RESET, the client gone) the commands still waiting are answered
/// (within the command timeout), then the connection closes, which
/// unsubscribes everything on the shard. `unreachable` is set, before any
/// command is answered, when the connection cannot be opened.
pub(super) fn spawn(
    shard: Arc<Shard>,
    proto: Protocol,
    unreachable: Arc<AtomicBool>,
) -> (mpsc::UnboundedSender<Cmd>, mpsc::Receiver<Event>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Cmd>();
    let (events, events_rx) = mpsc::channel(EVENTS);
    let budget = Arc::new(Semaphore::new(BUDGET));
    tokio::spawn(async move {
        let name = shard.spec.name.clone();
        let mut waiting: VecDeque<Waiting> = VecDeque::new();
        let mut connected = false;
        let err = match shard.connect_dedicated(proto).await {
            Err(e) => {
                unreachable.store(true, Ordering::Release);
                e
            }
            Ok(mut stream) => {
                connected = true;
                let mut buf = BytesMut::with_capacity(READ);
                let mut scanner = ReplyScanner::default();
                let lost = |e: std::io::Error| BackendError::io(BackendErrorKind::ConnectionLost, &name, e);
                let mut closing: Option<tokio::time::Instant> = None;
                'conn: loop {
                    if closing.is_some() && waiting.is_empty() {
                        return;
                    }
                    let deadline = closing.unwrap_or_else(|| tokio::time::Instant::now() + shard.spec.command_timeout);
                    if buf.capacity() - buf.len() < READ / 4 {
                        buf.reserve(READ);
                    }
                    tokio::select! {
                        cmd = rx.recv(), if closing.is_none() => {
                            let Some(cmd) = cmd else {
                                closing = Some(tokio::time::Instant::now() + shard.spec.command_timeout);
                                continue;
                            };
                            waiting.push_back(Waiting { left: cmd.frames.max(1), got: BytesMut::new(), reply: cmd.reply });
                            if let Err(e) = crate::tls::stream::send(&mut stream, &cmd.req).await {
                                break 'conn lost(e);
                            }
                        }
                        r = stream.read_buf(&mut buf) => {
                            match r {
                                Ok(0) => break 'conn BackendError::new(BackendErrorKind::ConnectionLost, &name, "connection closed by backend"),
                                Err(e) => break 'conn lost(e),
                                Ok(_) => {}
                            }
                            if let Err(e) = frames(&mut buf, &mut scanner, &mut waiting, &events, &budget).await {
                                break 'conn BackendError::new(BackendErrorKind::Protocol, &name, e.to_string());
                            }
                        }
                        _ = tokio::time::sleep_until(deadline), if closing.is_some() => {
                            let e = BackendError::new(BackendErrorKind::Timeout, &name, "no confirmation before the connection closed");
                            waiting.drain(..).for_each(|w| w.reply.complete(Err(e.clone())));
                            return;
                        }
                    }
                }
            }
        };
        for w in waiting.drain(..) {
            w.reply.complete(Err(err.clone()));
        }
        if rx.is_closed() && rx.is_empty() {
            return; // the session no longer listens
        }
        let _ = events.send(Event::Lost { connected }).await;
        while let Some(cmd) = rx.recv().await {
            cmd.reply.complete(Err(err.clone()));
        }
    });
    (tx, events_rx)
}

/// Takes every complete frame off the front of `buf`: runs of messages are
/// sent as one event, confirmations answer the command waiting.
async fn frames(
    buf: &mut BytesMut,
    scanner: &mut ReplyScanner,
    waiting: &mut VecDeque<Waiting>,
    events: &mpsc::Sender<Event>,
    budget: &Arc<Semaphore>,
) -> Result<(), crate::protocol::reply::FrameError> {
    // Bytes at the front of `buf` that are whole messages not sent yet.
    let mut run = 0;
    loop {
        // Most frames are messages: their usual form is recognized
        // directly (a third of the cost of the general scan in a debug
        // build); anything else, or a partial frame, is scanned.
        if scanner.idle()
            && let Some(n) = message_len(&buf[run..])
        {
            run += n;
            continue;
        }
        let Some(n) = scanner.next_frame(&buf[run..])? else {
            break;
        };
        if is_message(&buf[run..run + n]) {
            run += n;
            continue;
        }
        if run > 0 {
            deliver(events, budget, buf.split_to(run).freeze()).await;
            run = 0;
        }
        let frame = buf.split_to(n);
        // A reply nobody waits for (cannot happen with the session's counts).
        let Some(w) = waiting.front_mut() else { continue };
        // An error answers the whole command (the shard refused it: no
        // confirmations follow).
        let error = w.got.is_empty() && crate::protocol::reply::is_error(&frame);
        w.got.extend_from_slice(&frame);
        w.left -= 1;
        if (w.left == 0 || error)
            && let Some(w) = waiting.pop_front()
        {
            w.reply.complete(Ok(w.got.freeze()));
        }
    }
    if run > 0 {
        deliver(events, budget, buf.split_to(run).freeze()).await;
    }
    Ok(())
}

/// Sends a batch of messages once the budget has room for it (a batch
/// larger than the whole budget waits for all of it). The session gone:
/// dropped.
async fn deliver(events: &mpsc::Sender<Event>, budget: &Arc<Semaphore>, frames: Bytes) {
    let n = frames.len().min(BUDGET) as u32;
    if let Ok(permit) = budget.clone().acquire_many_owned(n).await {
        let _ = events.send(Event::Messages(frames, permit)).await;
    }
}

/// The length of the `message` frame (`*3` or `>3`, canonical lengths) at
/// the front of `buf`, if it is one and complete.
fn message_len(buf: &[u8]) -> Option<usize> {
    let head = b"3\r\n$7\r\nmessage\r\n";
    if !matches!(buf.first(), Some(b'*' | b'>')) || buf.get(1..1 + head.len())? != head {
        return None;
    }
    let channel_end = bulk_end(buf, 1 + head.len())?;
    bulk_end(buf, channel_end)
}

/// The end of the bulk string (`$<len>\r\n<data>\r\n`) at `at`, if it is
/// complete and its length plain decimal digits.
fn bulk_end(buf: &[u8], at: usize) -> Option<usize> {
    if *buf.get(at)? != b'$' {
        return None;
    }
    let mut i = at + 1;
    let mut len = 0usize;
    while let Some(&d) = buf.get(i) {
        if d == b'\r' {
            break;
        }
        if !d.is_ascii_digit() || i - at > 12 {
            return None;
        }
        len = len * 10 + (d - b'0') as usize;
        i += 1;
    }
    if i == at + 1 || *buf.get(i + 1)? != b'\n' {
        return None;
    }
    let end = i + 2 + len + 2;
    (buf.get(end - 2..end)? == b"\r\n").then_some(end)
}

/// A message (`message`, `pmessage`) in RESP2 or RESP3, or any RESP3 push
/// that is not a subscription's confirmation: out of band, not the answer
/// to a command. Looks only at the frame's first bytes.
fn is_message(frame: &[u8]) -> bool {
    let (Some(&t), Some(rest)) = (frame.first(), frame.get(1..)) else {
        return false;
    };
    if t != b'*' && t != b'>' {
        return false;
    }
    if rest.starts_with(b"3\r\n$7\r\nmessage\r\n") || rest.starts_with(b"4\r\n$8\r\npmessage\r\n") {
        return true;
    }
    let confirmation = [
        &b"$9\r\nsubscribe\r\n"[..],
        b"$10\r\npsubscribe\r\n",
        b"$11\r\nunsubscribe\r\n",
        b"$12\r\npunsubscribe\r\n",
    ];
    t == b'>'
        && !confirmation
            .iter()
            .any(|c| rest.get(3..).is_some_and(|r| r.starts_with(c)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_confirmations() {
        assert!(is_message(b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n"));
        assert!(is_message(b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n"));
        assert!(is_message(b"*4\r\n$8\r\npmessage\r\n$1\r\np\r\n$1\r\nc\r\n$1\r\nm\r\n"));
        assert!(is_message(b">2\r\n$10\r\ninvalidate\r\n*0\r\n"));
        assert!(!is_message(b"*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n"));
        assert!(!is_message(b">3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n"));
        assert!(!is_message(b">3\r\n$12\r\npunsubscribe\r\n$-1\r\n:0\r\n"));
        assert!(!is_message(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"));
        assert!(!is_message(b"-ERR x\r\n"));
        assert!(!is_message(b"*3\r\n$7\r\nmessagf\r\n"));
    }

    #[test]
    fn message_len_agrees_with_the_scanner() {
        let frames: [&[u8]; 8] = [
            b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n",
            b">3\r\n$7\r\nmessage\r\n$0\r\n\r\n$12\r\nhello\r\nworld\r\n",
            b"*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n",
            b"*4\r\n$8\r\npmessage\r\n$1\r\np\r\n$1\r\nc\r\n$1\r\nm\r\n",
            b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n:1\r\n",
            b"*3\r\n$7\r\nmessage\r\n$-1\r\n$1\r\nm\r\n",
            b"*3\r\n$7\r\nmessage\r\n$2\r\nc\r\n$1\r\nm\r\n",
            b"+OK\r\n",
        ];
        for f in frames {
            let whole = ReplyScanner::default().next_frame(f).ok().flatten();
            let fast = message_len(f);
            assert!(fast.is_none() || fast == whole, "{:?}", String::from_utf8_lossy(f));
            // Cut anywhere: never a frame.
            for cut in 0..f.len() {
                assert_eq!(message_len(&f[..cut]), None);
            }
        }
        assert_eq!(message_len(frames[0]), Some(frames[0].len()));
        assert_eq!(message_len(frames[1]), Some(frames[1].len()));
    }
}
