//! `COMMAND` / `COMMAND INFO` reply entries, byte-for-byte as Redis 7.0 writes them
//! (server.c `addReplyCommandInfo`), in RESP2 and RESP3.
//!
//! Redis's quirks, kept on purpose:
//! - flags, ACL categories and key-spec flags are status strings (`+write`); tips, key-spec
//!   field names and values are bulk strings;
//! - in RESP3 flags, categories, tips and the key-spec list are sets (`~`), each key spec and
//!   its `begin_search` / `find_keys` parts are maps (`%`); in RESP2 maps are flat arrays;
//! - an empty subcommand list is an empty *set* (`~0` in RESP3, `*0` in RESP2), a non-empty
//!   one an *array* in both protocols;
//! - Redis lists subcommands in hash order (random per server start); we list them in name
//!   order, which is as valid a reply.

use bytes::{BufMut, BytesMut};

use super::spec::{BeginSearch, CommandSpec, FLAG_NAMES, FindKeys, KEY_SPEC_FLAG_NAMES, KeySpec};

/// Appends one `COMMAND INFO` entry (the 10-element array) for `spec` to `out`.
pub fn encode_command_info(spec: &CommandSpec, resp3: bool, out: &mut BytesMut) {
    let w = &mut Writer { out, resp3 };
    w.array(10);
    w.bulk(spec.name);
    w.int(spec.arity as i64);
    w.flag_set(spec.flags, FLAG_NAMES);
    w.int(spec.first_key as i64);
    w.int(spec.last_key as i64);
    w.int(spec.step as i64);
    w.set(spec.acl_categories.len());
    for c in spec.acl_categories {
        w.status(c);
    }
    w.set(spec.tips.len());
    for t in spec.tips {
        w.bulk(t);
    }
    w.set(spec.key_specs.len());
    for ks in spec.key_specs {
        key_spec(w, ks);
    }
    if spec.subcommands.is_empty() {
        w.set(0);
    } else {
        w.array(spec.subcommands.len());
        for sub in spec.subcommands {
            encode_command_info(sub, w.resp3, w.out);
        }
    }
}

fn key_spec(w: &mut Writer<'_>, ks: &KeySpec) {
    w.map(if ks.notes.is_empty() { 3 } else { 4 });
    if !ks.notes.is_empty() {
        w.bulk("notes");
        w.bulk(ks.notes);
    }
    w.bulk("flags");
    w.flag_set(ks.flags, KEY_SPEC_FLAG_NAMES);

    w.bulk("begin_search");
    w.map(2);
    w.bulk("type");
    match ks.begin {
        BeginSearch::Index(pos) => {
            w.bulk("index");
            w.bulk("spec");
            w.map(1);
            w.bulk("index");
            w.int(pos as i64);
        }
        BeginSearch::Keyword { keyword, start_from } => {
            w.bulk("keyword");
            w.bulk("spec");
            w.map(2);
            w.bulk("keyword");
            w.bulk(keyword);
            w.bulk("startfrom");
            w.int(start_from as i64);
        }
        BeginSearch::Unknown => {
            w.bulk("unknown");
            w.bulk("spec");
            w.map(0);
        }
    }

    w.bulk("find_keys");
    w.map(2);
    w.bulk("type");
    match ks.find {
        FindKeys::Range { last_key, step, limit } => {
            w.bulk("range");
            w.bulk("spec");
            w.map(3);
            w.bulk("lastkey");
            w.int(last_key as i64);
            w.bulk("keystep");
            w.int(step as i64);
            w.bulk("limit");
            w.int(limit as i64);
        }
        FindKeys::Keynum {
            keynum_idx,
            first_key,
            step,
        } => {
            w.bulk("keynum");
            w.bulk("spec");
            w.map(3);
            w.bulk("keynumidx");
            w.int(keynum_idx as i64);
            w.bulk("firstkey");
            w.int(first_key as i64);
            w.bulk("keystep");
            w.int(step as i64);
        }
        FindKeys::Unknown => {
            w.bulk("unknown");
            w.bulk("spec");
            w.map(0);
        }
    }
}

/// A tiny RESP writer: just the reply types `COMMAND INFO` uses.
struct Writer<'a> {
    out: &'a mut BytesMut,
    resp3: bool,
}

impl Writer<'_> {
    fn header(&mut self, kind: u8, n: i64) {
        let mut buf = itoa::Buffer::new();
        let digits = buf.format(n);
        self.out.reserve(digits.len() + 3);
        self.out.put_u8(kind);
        self.out.put_slice(digits.as_bytes());
        self.out.put_slice(b"\r\n");
    }

    fn array(&mut self, n: usize) {
        self.header(b'*', n as i64);
    }

    fn set(&mut self, n: usize) {
        self.header(if self.resp3 { b'~' } else { b'*' }, n as i64);
    }

    /// A map of `n` pairs: `%n` in RESP3, a flat array of `2n` in RESP2.
    fn map(&mut self, n: usize) {
        if self.resp3 {
            self.header(b'%', n as i64);
        } else {
            self.header(b'*', 2 * n as i64);
        }
    }

    fn int(&mut self, v: i64) {
        self.header(b':', v);
    }

    fn bulk(&mut self, s: &str) {
        self.header(b'$', s.len() as i64);
        self.out.reserve(s.len() + 2);
        self.out.put_slice(s.as_bytes());
        self.out.put_slice(b"\r\n");
    }

    fn status(&mut self, s: &str) {
        self.out.reserve(s.len() + 3);
        self.out.put_u8(b'+');
        self.out.put_slice(s.as_bytes());
        self.out.put_slice(b"\r\n");
    }

    /// The names of the bits set in `flags`, in the table's order, as a set of statuses.
    fn flag_set(&mut self, flags: u32, names: &[(u32, &str)]) {
        let n = names.iter().filter(|(bit, _)| flags & bit != 0).count();
        self.set(n);
        for (bit, name) in names {
            if flags & bit != 0 {
                self.status(name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::spec::lookup;

    fn enc(name: &str, resp3: bool) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode_command_info(lookup(name.as_bytes()).expect("known command"), resp3, &mut out);
        out.to_vec()
    }

    #[test]
    fn get_matches_redis_7_0() {
        // Captured from redis-server 7.0.15 (`COMMAND INFO get`, outer array stripped).
        let resp2: &[u8] = b"*10\r\n$3\r\nget\r\n:2\r\n*2\r\n+readonly\r\n+fast\r\n:1\r\n:1\r\n:1\r\n\
            *3\r\n+@read\r\n+@string\r\n+@fast\r\n*0\r\n*1\r\n*6\r\n$5\r\nflags\r\n*2\r\n+RO\r\n\
            +access\r\n$12\r\nbegin_search\r\n*4\r\n$4\r\ntype\r\n$5\r\nindex\r\n$4\r\nspec\r\n\
            *2\r\n$5\r\nindex\r\n:1\r\n$9\r\nfind_keys\r\n*4\r\n$4\r\ntype\r\n$5\r\nrange\r\n\
            $4\r\nspec\r\n*6\r\n$7\r\nlastkey\r\n:0\r\n$7\r\nkeystep\r\n:1\r\n$5\r\nlimit\r\n:0\r\n\
            *0\r\n";
        assert_eq!(enc("get", false), resp2);
        let resp3: &[u8] = b"*10\r\n$3\r\nget\r\n:2\r\n~2\r\n+readonly\r\n+fast\r\n:1\r\n:1\r\n:1\r\n\
            ~3\r\n+@read\r\n+@string\r\n+@fast\r\n~0\r\n~1\r\n%3\r\n$5\r\nflags\r\n~2\r\n+RO\r\n\
            +access\r\n$12\r\nbegin_search\r\n%2\r\n$4\r\ntype\r\n$5\r\nindex\r\n$4\r\nspec\r\n\
            %1\r\n$5\r\nindex\r\n:1\r\n$9\r\nfind_keys\r\n%2\r\n$4\r\ntype\r\n$5\r\nrange\r\n\
            $4\r\nspec\r\n%3\r\n$7\r\nlastkey\r\n:0\r\n$7\r\nkeystep\r\n:1\r\n$5\r\nlimit\r\n:0\r\n\
            ~0\r\n";
        assert_eq!(enc("get", true), resp3);
    }

    #[test]
    fn container_subcommands_are_an_array() {
        let r3 = enc("config", true);
        assert!(
            r3.starts_with(b"*10\r\n$6\r\nconfig\r\n:-2\r\n~0\r\n:0\r\n:0\r\n:0\r\n~1\r\n+@slow\r\n~0\r\n~0\r\n*5\r\n")
        );
        let r2 = enc("config", false);
        assert!(
            r2.starts_with(b"*10\r\n$6\r\nconfig\r\n:-2\r\n*0\r\n:0\r\n:0\r\n:0\r\n*1\r\n+@slow\r\n*0\r\n*0\r\n*5\r\n")
        );
    }

    #[test]
    fn notes_come_first_in_a_key_spec() {
        let r3 = enc("set", true);
        let needle: &[u8] = b"~1\r\n%4\r\n$5\r\nnotes\r\n";
        assert!(r3.windows(needle.len()).any(|w| w == needle));
    }
}
