//! Writing replies the proxy makes itself (local commands, merged fan-out
//! results, errors), in the encoding the client negotiated: RESP3 clients get
//! maps, sets, `_` nulls and verbatim strings where Redis would send them.

use bytes::{BufMut, BytesMut};

use super::Protocol;
use super::request::put_header;

/// Appends reply frames to a buffer in one protocol.
pub struct Encoder<'a> {
    pub buf: &'a mut BytesMut,
    pub proto: Protocol,
}

impl<'a> Encoder<'a> {
    pub fn new(buf: &'a mut BytesMut, proto: Protocol) -> Self {
        Encoder { buf, proto }
    }

    pub fn resp3(&self) -> bool {
        self.proto == Protocol::Resp3
    }

    pub fn simple(&mut self, s: &str) {
        self.buf.reserve(s.len() + 3);
        self.buf.put_u8(b'+');
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.extend_from_slice(b"\r\n");
    }

    /// A HELP reply: an array of status lines, as Redis's `addReplyHelp`.
    pub fn help(&mut self, lines: &[&str]) {
        self.array(lines.len());
        for l in lines {
            self.simple(l);
        }
    }

    pub fn ok(&mut self) {
        self.buf.extend_from_slice(b"+OK\r\n");
    }

    /// An error reply; `msg` starts with its code (`ERR ...`, `CROSSSHARD ...`).
    /// Line breaks would end the frame early, so they become spaces.
    pub fn error(&mut self, msg: &str) {
        self.buf.reserve(msg.len() + 3);
        self.buf.put_u8(b'-');
        self.line_text(msg);
        self.buf.extend_from_slice(b"\r\n");
    }

    /// An error reply from its code and the text after it (`-CODE text`),
    /// without building the message first.
    pub fn error_with(&mut self, code: &str, text: &str) {
        self.buf.reserve(code.len() + text.len() + 4);
        self.buf.put_u8(b'-');
        self.line_text(code);
        self.buf.put_u8(b' ');
        self.line_text(text);
        self.buf.extend_from_slice(b"\r\n");
    }

    /// Text inside a one-line frame: line breaks become spaces.
    fn line_text(&mut self, text: &str) {
        for b in text.bytes() {
            self.buf.put_u8(if b == b'\r' || b == b'\n' { b' ' } else { b });
        }
    }

    pub fn integer(&mut self, n: i64) {
        let mut b = itoa::Buffer::new();
        let s = b.format(n);
        self.buf.reserve(s.len() + 3);
        self.buf.put_u8(b':');
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.extend_from_slice(b"\r\n");
    }

    pub fn bulk(&mut self, data: &[u8]) {
        put_header(self.buf, b'$', data.len());
        self.buf.extend_from_slice(data);
        self.buf.extend_from_slice(b"\r\n");
    }

    /// A verbatim text string in RESP3 (`=len\r\ntxt:...`), bulk in RESP2, as
    /// Redis sends INFO and CLIENT INFO.
    pub fn verbatim(&mut self, data: &[u8]) {
        if self.resp3() {
            put_header(self.buf, b'=', data.len() + 4);
            self.buf.extend_from_slice(b"txt:");
            self.buf.extend_from_slice(data);
            self.buf.extend_from_slice(b"\r\n");
        } else {
            self.bulk(data);
        }
    }

    pub fn null(&mut self) {
        self.buf
            .extend_from_slice(if self.resp3() { b"_\r\n" } else { b"$-1\r\n" });
    }

    pub fn array(&mut self, n: usize) {
        put_header(self.buf, b'*', n);
    }

    /// A map of `n` pairs (`%n` in RESP3, a flat `*2n` array in RESP2).
    pub fn map(&mut self, n: usize) {
        if self.resp3() {
            put_header(self.buf, b'%', n)
        } else {
            put_header(self.buf, b'*', 2 * n)
        }
    }

    /// An out-of-band push of `n` elements (`>n` in RESP3, an array in
    /// RESP2), as pub/sub messages and confirmations are.
    pub fn push(&mut self, n: usize) {
        put_header(self.buf, if self.resp3() { b'>' } else { b'*' }, n);
    }

    /// A set of `n` members (`~n` in RESP3, an array in RESP2).
    pub fn set(&mut self, n: usize) {
        put_header(self.buf, if self.resp3() { b'~' } else { b'*' }, n);
    }

    /// Appends a frame that is already encoded.
    pub fn raw(&mut self, frame: &[u8]) {
        self.buf.extend_from_slice(frame);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_is_an_array_of_status_lines() {
        let mut b = BytesMut::new();
        Encoder::new(&mut b, Protocol::Resp3).help(&["LEN", "    Return the length."]);
        assert_eq!(&b[..], b"*2\r\n+LEN\r\n+    Return the length.\r\n");
    }

    #[test]
    fn encodes_per_protocol() {
        let mut b = BytesMut::new();
        let mut e = Encoder::new(&mut b, Protocol::Resp2);
        e.map(1);
        e.bulk(b"k");
        e.null();
        e.error("ERR a\r\nb");
        assert_eq!(&b[..], b"*2\r\n$1\r\nk\r\n$-1\r\n-ERR a  b\r\n");
        let mut b = BytesMut::new();
        let mut e = Encoder::new(&mut b, Protocol::Resp3);
        e.map(1);
        e.verbatim(b"x");
        e.null();
        e.set(0);
        assert_eq!(&b[..], b"%1\r\n=5\r\ntxt:x\r\n_\r\n~0\r\n");
    }
}
