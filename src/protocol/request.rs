//! The client request parser: turns untrusted client bytes into [`Request`]s.
//!
//! Why not `redis-protocol` here: its decoder has no inline commands, no size
//! limits, unbounded nesting (a few KB of `*1\r\n` overflow the stack) and
//! re-parses a partial frame from byte 0 on every read, which is quadratic for
//! a large MSET arriving in small reads. Client requests are only ever flat
//! arrays of bulk strings or inline lines, so a small hand-written parser that
//! is resumable and enforces limits is both safer and faster. Backend replies
//! (a trusted peer) are scanned by [`super::reply`].
//!
//! The parser never copies argument bytes: a complete request is split off the
//! read buffer as one frozen [`Bytes`] (`raw`, forwarded to a backend as is)
//! and each argument is a range into it.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use smallvec::SmallVec;

/// Limits applied to client input. Every one of them protects the proxy's
/// memory from a single client.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest bulk string accepted (Redis: `proto-max-bulk-len`, 512 MiB).
    pub max_bulk: usize,
    /// Most arguments in one request.
    pub max_args: usize,
    /// Longest inline command line (Redis: 64 KiB).
    pub max_inline: usize,
    /// Most bytes one partial request may occupy (Redis:
    /// `client-query-buffer-limit`, 1 GiB).
    pub max_request: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bulk: 512 * 1024 * 1024,
            max_args: 1024 * 1024,
            max_inline: 64 * 1024,
            max_request: 1024 * 1024 * 1024,
        }
    }
}

/// A protocol violation. The message is sent to the client as
/// `-ERR Protocol error: <msg>` and the connection is closed, as Redis does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Protocol error: {0}")]
pub struct ProtocolError(pub String);

impl ProtocolError {
    fn new(msg: impl Into<String>) -> Self {
        ProtocolError(msg.into())
    }
}

/// Argument ranges: most commands have few arguments, so they live inline.
/// [`INLINE_ARGS`] covers an MGET of 11 keys without a heap allocation.
pub type ArgRanges = SmallVec<[(u32, u32); INLINE_ARGS]>;

/// Arguments kept without allocating, here and in the session's argument
/// list (6 -> 12: MGET of 10 keys, 2 allocations per request -> 0;
/// bench/alloc_count.rs). Larger costs every request a bigger move (24:
/// parse/get in bench/micro.rs 48 -> 61 ns), so not larger.
pub const INLINE_ARGS: usize = 12;

/// A request's arguments as slices of it ([`Request::arg_list`]).
pub type ArgList<'a> = SmallVec<[&'a [u8]; INLINE_ARGS]>;

/// One complete client request.
#[derive(Debug, Clone)]
pub struct Request {
    /// The request as RESP multibulk bytes (inline commands are re-encoded).
    pub raw: Bytes,
    args: ArgRanges,
}

impl Request {
    /// Builds a request from arguments (used for requests the proxy makes up).
    pub fn from_args<A: AsRef<[u8]>>(args: &[A]) -> Request {
        let mut buf = BytesMut::with_capacity(16 + args.iter().map(|a| a.as_ref().len() + 16).sum::<usize>());
        let mut ranges = ArgRanges::new();
        put_header(&mut buf, b'*', args.len());
        for a in args {
            let a = a.as_ref();
            put_header(&mut buf, b'$', a.len());
            let start = buf.len();
            buf.extend_from_slice(a);
            ranges.push((start as u32, (start + a.len()) as u32));
            buf.extend_from_slice(b"\r\n");
        }
        Request {
            raw: buf.freeze(),
            args: ranges,
        }
    }

    /// Number of arguments, the command name included.
    pub fn len(&self) -> usize {
        self.args.len()
    }

    /// True when the request has no arguments (never returned by the parser).
    pub fn is_empty(&self) -> bool {
        self.args.is_empty()
    }

    /// Argument `i` (0 is the command name), without copying.
    pub fn arg(&self, i: usize) -> Option<&[u8]> {
        self.args.get(i).map(|&(s, e)| &self.raw[s as usize..e as usize])
    }

    /// Argument `i` as a cheap reference-counted slice of the request.
    pub fn arg_bytes(&self, i: usize) -> Option<Bytes> {
        self.args.get(i).map(|&(s, e)| self.raw.slice(s as usize..e as usize))
    }

    /// All arguments.
    pub fn args(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        self.args.iter().map(|&(s, e)| &self.raw[s as usize..e as usize])
    }

    /// All arguments as a list (inline up to [`INLINE_ARGS`]).
    pub fn arg_list(&self) -> ArgList<'_> {
        self.args().collect()
    }

    /// All arguments as slices, written into `inline` when they fit (the
    /// usual case), else into `heap`: what the session routes and executes
    /// each request with. The caller's array is filled in place; collecting
    /// into a [`ArgList`] instead checked capacity and state per argument
    /// and moved the 200-byte list (about 140 instructions per SET in
    /// bench/callgrind.sh, -P 16).
    pub fn arg_slices<'r, 'b>(
        &'r self,
        inline: &'b mut [&'r [u8]; INLINE_ARGS],
        heap: &'b mut Vec<&'r [u8]>,
    ) -> &'b [&'r [u8]] {
        let raw: &'r [u8] = &self.raw;
        let n = self.args.len();
        if n > INLINE_ARGS {
            heap.extend(self.args());
            return heap;
        }
        for (d, &(s, e)) in inline.iter_mut().zip(self.args.iter()) {
            *d = raw.get(s as usize..e as usize).unwrap_or_default();
        }
        &inline[..n]
    }

    /// The command name (argument 0).
    pub fn name(&self) -> &[u8] {
        self.arg(0).unwrap_or(b"")
    }
}

/// Writes `<prefix><n>\r\n`.
pub fn put_header(buf: &mut BytesMut, prefix: u8, n: usize) {
    let mut b = itoa::Buffer::new();
    let s = b.format(n);
    buf.reserve(s.len() + 3);
    buf.put_u8(prefix);
    buf.extend_from_slice(s.as_bytes());
    buf.extend_from_slice(b"\r\n");
}

/// Writes `data` as a RESP bulk string.
pub fn put_bulk(buf: &mut BytesMut, data: &[u8]) {
    put_header(buf, b'$', data.len());
    buf.extend_from_slice(data);
    buf.extend_from_slice(b"\r\n");
}

/// Parser state carried across reads, so a large request is scanned once.
#[derive(Debug, Default)]
enum State {
    #[default]
    Start,
    /// Inside a multibulk: `remaining` arguments to go, scanning at `pos`.
    Multibulk {
        remaining: usize,
        pos: usize,
        args: ArgRanges,
    },
    /// Inside an inline line that has no newline yet; scanned up to `pos`.
    Inline { pos: usize },
}

/// A resumable request parser, one per client connection.
#[derive(Debug, Default)]
pub struct RequestParser {
    limits: Limits,
    state: State,
}

impl RequestParser {
    pub fn new(limits: Limits) -> Self {
        RequestParser {
            limits,
            state: State::Start,
        }
    }

    /// Parses the next complete request from the front of `buf`, removing its
    /// bytes. `Ok(None)` means more bytes are needed; partial progress is kept
    /// so the same bytes are not scanned again.
    pub fn parse(&mut self, buf: &mut BytesMut) -> Result<Option<Request>, ProtocolError> {
        loop {
            match &mut self.state {
                State::Start => {
                    let Some(&first) = buf.first() else { return Ok(None) };
                    if first == b'*' {
                        // The common case, a whole well-formed request already
                        // buffered, in one pass; anything else (incomplete,
                        // unusual or invalid) goes the general way below, which
                        // gives the exact error.
                        if let Some((args, len)) = parse_complete(buf, &self.limits) {
                            let raw = buf.split_to(len).freeze();
                            return Ok(Some(Request { raw, args }));
                        }
                        let Some((n, next)) = read_line_int(buf, 1)? else {
                            return Ok(None);
                        };
                        let n = n.ok_or_else(|| ProtocolError::new("invalid multibulk length"))?;
                        if n > self.limits.max_args as i64 || n > i32::MAX as i64 {
                            return Err(ProtocolError::new("invalid multibulk length"));
                        }
                        if n <= 0 {
                            // `*0` and `*-1` are empty requests: Redis ignores them.
                            buf.advance(next);
                            continue;
                        }
                        self.state = State::Multibulk {
                            remaining: n as usize,
                            pos: next,
                            args: ArgRanges::new(),
                        };
                    } else {
                        self.state = State::Inline { pos: 0 };
                    }
                }
                State::Multibulk { remaining, pos, args } => {
                    while *remaining > 0 {
                        let Some(&b) = buf.get(*pos) else {
                            return self.need_more(buf);
                        };
                        if b != b'$' {
                            return Err(ProtocolError(format!("expected '$', got '{}'", b as char)));
                        }
                        let Some((len, data)) = read_line_int(buf, *pos + 1)? else {
                            return self.need_more(buf);
                        };
                        let len = match len {
                            Some(l) if l >= 0 && (l as u64) <= self.limits.max_bulk as u64 => l as usize,
                            _ => return Err(ProtocolError::new("invalid bulk length")),
                        };
                        let end = data + len;
                        if end + 2 > self.limits.max_request || end > u32::MAX as usize - 2 {
                            return Err(ProtocolError::new("request larger than the client query buffer limit"));
                        }
                        if buf.len() < end + 2 {
                            // Reserve for the whole bulk up front when it is modest,
                            // so a big value is not copied on every doubling.
                            let want = end + 2 - buf.len();
                            if want <= 4 * 1024 * 1024 {
                                buf.reserve(want);
                            }
                            return Ok(None);
                        }
                        if &buf[end..end + 2] != b"\r\n" {
                            return Err(ProtocolError::new("bulk string not terminated by CRLF"));
                        }
                        args.push((data as u32, end as u32));
                        *pos = end + 2;
                        *remaining -= 1;
                    }
                    let len = *pos;
                    let args = std::mem::take(args);
                    self.state = State::Start;
                    let raw = buf.split_to(len).freeze();
                    return Ok(Some(Request { raw, args }));
                }
                State::Inline { pos } => {
                    let from = *pos;
                    let Some(nl) = buf[from..].iter().position(|&b| b == b'\n') else {
                        if buf.len() > self.limits.max_inline {
                            return Err(ProtocolError::new("too big inline request"));
                        }
                        *pos = buf.len();
                        return Ok(None);
                    };
                    let end = from + nl;
                    if end > self.limits.max_inline {
                        return Err(ProtocolError::new("too big inline request"));
                    }
                    self.state = State::Start;
                    let line = buf.split_to(end + 1);
                    let line = line.strip_suffix(b"\n").unwrap_or(&line);
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    let words = split_inline(line)?;
                    if words.is_empty() {
                        continue; // empty lines are ignored, as by Redis
                    }
                    if words.len() > self.limits.max_args {
                        return Err(ProtocolError::new("invalid multibulk length"));
                    }
                    return Ok(Some(Request::from_args(&words)));
                }
            }
        }
    }

    fn need_more(&self, buf: &BytesMut) -> Result<Option<Request>, ProtocolError> {
        if buf.len() > self.limits.max_request {
            return Err(ProtocolError::new("request larger than the client query buffer limit"));
        }
        Ok(None)
    }

    /// Bytes of the current partial request already accounted for, if any.
    pub fn in_progress(&self) -> bool {
        !matches!(self.state, State::Start)
    }
}

/// The fast path of [`RequestParser::parse`]: a multibulk request that is
/// entirely in `buf`, with canonical lengths (plain decimal digits, at most
/// 10), within the limits. Returns its argument ranges and its length, or
/// `None` for anything else, which the general parser then handles (so this
/// accepts a subset of what it accepts, with the same result). It scans the
/// bytes at most once more than the general parser would, and only when it
/// fails, which leaves the parser in a state that does not come back here
/// until the request is done.
fn parse_complete(buf: &[u8], limits: &Limits) -> Option<(ArgRanges, usize)> {
    let (n, mut pos) = canonical_len(buf, 1)?;
    if n == 0 || n > limits.max_args {
        return None;
    }
    let mut args = ArgRanges::new();
    for _ in 0..n {
        if *buf.get(pos)? != b'$' {
            return None;
        }
        let (len, data) = canonical_len(buf, pos + 1)?;
        if len > limits.max_bulk {
            return None;
        }
        let end = data + len;
        if end + 2 > limits.max_request || end > u32::MAX as usize - 2 || buf.get(end..end + 2)? != b"\r\n" {
            return None;
        }
        args.push((data as u32, end as u32));
        pos = end + 2;
    }
    Some((args, pos))
}

/// A length line at `from`: decimal digits (no sign, no leading zero but in
/// "0", at most 10) then `\r\n`. The value and the offset after the line.
#[inline(always)]
fn canonical_len(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut v = 0usize;
    let mut i = from;
    loop {
        let b = *buf.get(i)?;
        if b.is_ascii_digit() {
            v = v * 10 + (b - b'0') as usize;
            i += 1;
            if i - from > 10 {
                return None;
            }
        } else if b == b'\r' {
            break;
        } else {
            return None;
        }
    }
    let digits = i - from;
    if digits == 0 || (digits > 1 && buf[from] == b'0') || *buf.get(i + 1)? != b'\n' {
        return None;
    }
    Some((v, i + 2))
}

/// Reads an integer line starting at `from` (just after the type byte).
/// Returns `None` when the line is incomplete, `Some((None, _))` when it is not
/// a valid integer, and otherwise the value and the offset after `\r\n`.
/// A line is refused past 32 bytes, with its `\r` or before it arrives: the
/// same bound either way, so the outcome does not depend on how the bytes
/// were split into reads (the bound was `max_inline`, at most 64, before the
/// `\r`: under a small `max_inline` a line refused in pieces was accepted
/// whole; found by fuzz/request_parser).
fn read_line_int(buf: &[u8], from: usize) -> Result<Option<(Option<i64>, usize)>, ProtocolError> {
    let Some(rest) = buf.get(from..) else { return Ok(None) };
    let Some(cr) = rest.iter().position(|&b| b == b'\r') else {
        if rest.len() > 32 {
            return Err(ProtocolError::new("too big mbulk count string"));
        }
        return Ok(None);
    };
    if cr > 32 {
        return Err(ProtocolError::new("too big mbulk count string"));
    }
    match rest.get(cr + 1) {
        None => return Ok(None),
        Some(b'\n') => {}
        Some(_) => return Ok(Some((None, from + cr + 2))),
    }
    Ok(Some((parse_i64(&rest[..cr]), from + cr + 2)))
}

/// Parses a decimal integer the way Redis's `string2ll` does (no `+`, no
/// leading zeros except "0", no spaces).
pub fn parse_i64(s: &[u8]) -> Option<i64> {
    let (neg, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    if digits.is_empty() || digits.len() > 19 || (digits.len() > 1 && digits[0] == b'0') {
        return None;
    }
    let mut v: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_sub((d - b'0') as i64)?;
    }
    if neg { Some(v) } else { v.checked_neg() }
}

/// Splits an inline command line like Redis's `sdssplitargs`: words separated
/// by whitespace, "double quotes" with `\n \r \t \b \a \xHH \\ \"` escapes,
/// and 'single quotes' with only `\'`.
pub fn split_inline(line: &[u8]) -> Result<Vec<Vec<u8>>, ProtocolError> {
    let unbalanced = || ProtocolError::new("unbalanced quotes in request");
    // Redis splits a C string: a NUL byte ends the line.
    let line = match line.iter().position(|&b| b == 0) {
        Some(nul) => &line[..nul],
        None => line,
    };
    let mut out = Vec::new();
    let mut i = 0;
    let n = line.len();
    loop {
        // C's isspace(): ASCII whitespace plus vertical tab.
        while i < n && (line[i].is_ascii_whitespace() || line[i] == 0x0b) {
            i += 1;
        }
        if i >= n {
            return Ok(out);
        }
        let mut cur = Vec::new();
        let mut in_dq = false;
        let mut in_sq = false;
        loop {
            if in_dq {
                if i >= n {
                    return Err(unbalanced());
                }
                let c = line[i];
                if c == b'\\' && i + 3 < n && line[i + 1] == b'x' && is_hex(line[i + 2]) && is_hex(line[i + 3]) {
                    cur.push(hex(line[i + 2]) * 16 + hex(line[i + 3]));
                    i += 3;
                } else if c == b'\\' && i + 1 < n {
                    i += 1;
                    cur.push(match line[i] {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 8,
                        b'a' => 7,
                        other => other,
                    });
                } else if c == b'"' {
                    // The closing quote must be followed by a space or the end.
                    if i + 1 < n && !line[i + 1].is_ascii_whitespace() {
                        return Err(unbalanced());
                    }
                    i += 1;
                    break;
                } else {
                    cur.push(c);
                }
            } else if in_sq {
                if i >= n {
                    return Err(unbalanced());
                }
                let c = line[i];
                if c == b'\\' && i + 1 < n && line[i + 1] == b'\'' {
                    i += 1;
                    cur.push(b'\'');
                } else if c == b'\'' {
                    if i + 1 < n && !line[i + 1].is_ascii_whitespace() {
                        return Err(unbalanced());
                    }
                    i += 1;
                    break;
                } else {
                    cur.push(c);
                }
            } else {
                if i >= n {
                    break;
                }
                match line[i] {
                    b' ' | b'\n' | b'\r' | b'\t' => break,
                    b'"' => in_dq = true,
                    b'\'' => in_sq = true,
                    c => cur.push(c),
                }
            }
            i += 1;
        }
        out.push(cur);
    }
}

fn is_hex(c: u8) -> bool {
    c.is_ascii_hexdigit()
}

fn hex(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => c - b'A' + 10,
    }
}

#[cfg(test)]
mod tests;
