//! Backend reply framing: finds where each RESP2/RESP3 reply ends so it can be
//! forwarded byte for byte, plus small readers for the replies the proxy
//! merges (integers, arrays of bulk strings).
//!
//! Why not `redis-protocol`'s decoder: the proxy forwards reply bytes it does
//! not change, so it only needs frame boundaries, not a decoded tree; and that
//! decoder re-parses a partial frame from byte 0 on each read, which turns a
//! large LRANGE arriving in many reads quadratic. [`ReplyScanner`] keeps its
//! position and a stack of open aggregates across reads. The tests check it
//! against `redis-protocol` on random frames.

use bytes::Bytes;

/// The backend sent bytes that are not RESP: the connection is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid reply from backend: {0}")]
pub struct FrameError(pub &'static str);

/// Resumable scanner over a read buffer that holds whole replies followed by a
/// partial one. After [`ReplyScanner::next_frame`] returns `Some(len)`, the
/// caller removes `len` bytes from the front of the buffer.
#[derive(Debug, Default)]
pub struct ReplyScanner {
    pos: usize,
    /// Elements still expected by each open aggregate, innermost last.
    stack: Vec<u64>,
    /// The frame at the top level is a RESP3 push (`>`), out of band.
    push: bool,
}

/// Largest aggregate element count accepted from a backend.
const MAX_ELEMENTS: i64 = 1 << 32;

impl ReplyScanner {
    /// Returns the length of the complete frame at the front of `buf`, or
    /// `None` if more bytes are needed.
    pub fn next_frame(&mut self, buf: &[u8]) -> Result<Option<usize>, FrameError> {
        loop {
            let Some(&t) = buf.get(self.pos) else { return Ok(None) };
            if self.pos == 0 {
                self.push = t == b'>';
            }
            let Some(cr) = find_crlf(buf, self.pos + 1) else {
                return Ok(None);
            };
            let line = &buf[self.pos + 1..cr];
            let after = cr + 2;
            let mut children: u64 = 0;
            match t {
                b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => self.pos = after,
                b'$' | b'!' | b'=' => {
                    let n = int(line)?;
                    if n < 0 {
                        if t != b'$' {
                            return Err(FrameError("negative blob length"));
                        }
                        self.pos = after;
                    } else {
                        let end = usize::try_from(n)
                            .ok()
                            .and_then(|n| after.checked_add(n)?.checked_add(2))
                            .ok_or(FrameError("blob length out of range"))?;
                        if buf.len() < end {
                            return Ok(None);
                        }
                        if &buf[end - 2..end] != b"\r\n" {
                            return Err(FrameError("bulk string not terminated by CRLF"));
                        }
                        self.pos = end;
                    }
                }
                b'*' | b'~' | b'>' | b'%' | b'|' => {
                    let n = int(line)?;
                    if n > MAX_ELEMENTS {
                        return Err(FrameError("aggregate too large"));
                    }
                    self.pos = after;
                    if n > 0 {
                        children = n as u64;
                        if t == b'%' {
                            children *= 2;
                        } else if t == b'|' {
                            // An attribute map is followed by the reply it annotates.
                            children = children * 2 + 1;
                        }
                    } else if n < 0 && t != b'*' {
                        return Err(FrameError("negative aggregate length"));
                    } else if t == b'|' {
                        children = 1;
                    }
                }
                _ => return Err(FrameError("unknown type byte")),
            }
            if children > 0 {
                self.stack.push(children);
                continue;
            }
            // One element finished: close every aggregate it completes.
            loop {
                match self.stack.last_mut() {
                    None => {
                        let len = self.pos;
                        self.pos = 0;
                        return Ok(Some(len));
                    }
                    Some(top) => {
                        *top -= 1;
                        if *top > 0 {
                            break;
                        }
                        self.stack.pop();
                    }
                }
            }
        }
    }

    /// No frame is partly scanned: the next call starts at the front of the
    /// buffer it is given.
    pub fn idle(&self) -> bool {
        self.pos == 0 && self.stack.is_empty()
    }

    /// Whether the frame last returned by [`next_frame`](Self::next_frame)
    /// was a RESP3 push message (not a reply to any request).
    pub fn was_push(&self) -> bool {
        self.push
    }
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    let rest = buf.get(from..)?;
    let i = rest.iter().position(|&b| b == b'\r')?;
    if from + i + 1 < buf.len() { Some(from + i) } else { None }
}

fn int(line: &[u8]) -> Result<i64, FrameError> {
    super::request::parse_i64(line).ok_or(FrameError("invalid length"))
}

/// Length of the single complete frame at the front of `buf`, if there is one.
pub fn frame_len(buf: &[u8]) -> Option<usize> {
    ReplyScanner::default().next_frame(buf).ok().flatten()
}

/// True for an error reply (`-ERR ...` or RESP3 blob error).
pub fn is_error(frame: &[u8]) -> bool {
    matches!(frame.first(), Some(b'-') | Some(b'!'))
}

/// Reads a `:n` integer reply.
pub fn as_integer(frame: &[u8]) -> Option<i64> {
    let body = frame.strip_prefix(b":")?.strip_suffix(b"\r\n")?;
    super::request::parse_i64(body)
}

/// True for `+OK`.
pub fn is_ok(frame: &[u8]) -> bool {
    frame == b"+OK\r\n"
}

/// True for a null reply in either protocol (`$-1`, `*-1`, `_`).
pub fn is_null(frame: &[u8]) -> bool {
    frame == b"$-1\r\n" || frame == b"*-1\r\n" || frame == b"_\r\n"
}

/// Splits an array-like reply (`*`, `~`, `>`) into its element frames, each a
/// zero-copy slice of `frame`. `None` if the reply is not an aggregate.
pub fn elements(frame: &Bytes) -> Option<Vec<Bytes>> {
    if !matches!(frame.first(), Some(b'*') | Some(b'~') | Some(b'>') | Some(b'%')) {
        return None;
    }
    let cr = find_crlf(frame, 1)?;
    let mut n = int(&frame[1..cr]).ok()?;
    if frame[0] == b'%' {
        n *= 2;
    }
    let mut out = Vec::with_capacity(n.clamp(0, 1024) as usize);
    let mut pos = cr + 2;
    for _ in 0..n.max(0) {
        let len = frame_len(&frame[pos..])?;
        out.push(frame.slice(pos..pos + len));
        pos += len;
    }
    Some(out)
}

/// Offset of the first element of an array-like reply (`*`, `~`, `>`), just
/// past its header line; `None` if `frame` is not one. A null array (`*-1`)
/// has no elements: its offset is the end of the frame.
pub fn elements_start(frame: &[u8]) -> Option<usize> {
    if !matches!(frame.first(), Some(b'*') | Some(b'~') | Some(b'>')) {
        return None;
    }
    Some(find_crlf(frame, 1)? + 2)
}

/// The payload of a simple string, bulk string or verbatim string frame.
pub fn as_bytes(frame: &Bytes) -> Option<Bytes> {
    match frame.first()? {
        b'+' => Some(frame.slice(1..frame.len().checked_sub(2)?)),
        b'$' | b'=' => {
            let cr = find_crlf(frame, 1)?;
            let n = int(&frame[1..cr]).ok()?;
            if n < 0 {
                return None;
            }
            let start = cr + 2;
            let mut data = frame.slice(start..start + n as usize);
            if frame[0] == b'=' && data.len() >= 4 {
                data = data.slice(4..); // "txt:" format prefix
            }
            Some(data)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frames(input: &[u8], chunk: usize) -> Vec<Vec<u8>> {
        let mut sc = ReplyScanner::default();
        let mut buf = Vec::new();
        let mut out = Vec::new();
        for c in input.chunks(chunk.max(1)) {
            buf.extend_from_slice(c);
            while let Some(n) = sc.next_frame(&buf).unwrap() {
                out.push(buf.drain(..n).collect());
            }
        }
        assert!(buf.is_empty());
        out
    }

    #[test]
    fn resp2_and_resp3_frames() {
        let input: &[u8] = b"+OK\r\n-ERR x\r\n:5\r\n$3\r\nabc\r\n$-1\r\n*-1\r\n*2\r\n$1\r\na\r\n*1\r\n:1\r\n*0\r\n\
_\r\n,1.5\r\n#t\r\n(123\r\n!3\r\nerr\r\n=7\r\ntxt:abc\r\n%1\r\n+k\r\n+v\r\n~1\r\n:1\r\n>2\r\n+a\r\n+b\r\n|1\r\n+k\r\n+v\r\n:9\r\n%0\r\n";
        let whole = frames(input, input.len());
        assert_eq!(whole.len(), 19);
        for chunk in 1..8 {
            assert_eq!(frames(input, chunk), whole);
        }
    }

    #[test]
    fn helpers() {
        let f = Bytes::from_static(b"*3\r\n$1\r\na\r\n$-1\r\n*1\r\n:1\r\n");
        let el = elements(&f).unwrap();
        assert_eq!(el.len(), 3);
        assert_eq!(&el[1][..], b"$-1\r\n");
        assert_eq!(as_bytes(&el[0]).unwrap(), Bytes::from_static(b"a"));
        assert_eq!(as_integer(b":-42\r\n"), Some(-42));
        assert!(is_null(&el[1]));
        assert_eq!(
            as_bytes(&Bytes::from_static(b"=7\r\ntxt:abc\r\n")).unwrap(),
            Bytes::from_static(b"abc")
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(ReplyScanner::default().next_frame(b"?x\r\n").is_err());
        assert!(ReplyScanner::default().next_frame(b"$3\r\nabcd\r\n").is_err());
    }

    fn arb_frame() -> impl Strategy<Value = redis_protocol::resp3::types::OwnedFrame> {
        use redis_protocol::resp3::types::OwnedFrame as F;
        #[allow(unused_imports)]
        use redis_protocol::resp3::types::Resp3Frame as _;
        let leaf = prop_oneof![
            "[a-z]{0,8}".prop_map(|s| F::SimpleString {
                data: s.into_bytes(),
                attributes: None
            }),
            prop::collection::vec(any::<u8>(), 0..20).prop_map(|d| F::BlobString {
                data: d,
                attributes: None
            }),
            any::<i64>().prop_map(|n| F::Number {
                data: n,
                attributes: None
            }),
            Just(F::Null),
            any::<bool>().prop_map(|b| F::Boolean {
                data: b,
                attributes: None
            }),
        ];
        leaf.prop_recursive(4, 40, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(|d| F::Array {
                    data: d,
                    attributes: None
                }),
                prop::collection::vec(inner.clone(), 0..6).prop_map(|d| F::Push {
                    data: d,
                    attributes: None
                }),
            ]
        })
    }

    proptest! {
        #[test]
        fn agrees_with_redis_protocol(fs in prop::collection::vec(arb_frame(), 1..6), chunk in 1usize..32) {
            let mut input = Vec::new();
            let mut lens = Vec::new();
            for f in &fs {
                use redis_protocol::resp3::types::Resp3Frame as _;
                let mut b = vec![0u8; f.encode_len(false)];
                let n = redis_protocol::resp3::encode::complete::encode(&mut b, f, false).unwrap();
                b.truncate(n);
                lens.push(n);
                input.extend_from_slice(&b);
            }
            let got: Vec<usize> = frames(&input, chunk).iter().map(|f| f.len()).collect();
            prop_assert_eq!(got, lens);
        }
    }
}
