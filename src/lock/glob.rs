//! The lock namespace: which keys are lock keys, by Redis-style glob patterns.
//!
//! Matching runs on the request path for every key once Redlock is on, so the
//! common shapes (`lock:*`, `*:lock`, an exact name) are compiled to a prefix,
//! suffix or equality test; anything else falls back to a glob matcher with
//! the semantics of Redis's `stringmatchlen` (`*`, `?`, `[a-z]`, `[^x]`, `\`).

/// One compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Exact(Vec<u8>),
    Prefix(Vec<u8>),
    Suffix(Vec<u8>),
    Glob(Vec<u8>),
}

/// A set of patterns; a key is a lock key when any of them matches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Namespace {
    patterns: Vec<Pattern>,
    /// The bytes a lock key can start with, as a 256-bit set, when every
    /// pattern fixes its first byte (`lock:*`, the default, does): most
    /// keys are then told apart with one lookup, before any comparison
    /// (64 instructions per key with the default namespace before, in
    /// bench/callgrind.sh SET -P 16). `None`: some pattern can match any
    /// first byte (`*:lock`, `?x*`), every pattern is tried.
    firsts: Option<[u64; 4]>,
}

/// See [`Namespace::firsts`].
fn first_bytes(patterns: &[Pattern]) -> Option<[u64; 4]> {
    let mut set = [0u64; 4];
    for p in patterns {
        let first = match p {
            Pattern::Exact(b) | Pattern::Prefix(b) => *b.first()?,
            Pattern::Glob(g) => match g.first()? {
                b'*' | b'?' | b'[' | b'\\' => return None,
                &c => c,
            },
            Pattern::Suffix(_) => return None,
        };
        set[usize::from(first >> 6)] |= 1 << (first & 63);
    }
    Some(set)
}

fn is_literal(p: &[u8]) -> bool {
    !p.iter().any(|c| matches!(c, b'*' | b'?' | b'[' | b'\\'))
}

impl Namespace {
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Namespace {
        let patterns = patterns
            .iter()
            .map(|p| {
                let p = p.as_ref().as_bytes();
                if is_literal(p) {
                    Pattern::Exact(p.to_vec())
                } else if let Some(head) = p.strip_suffix(b"*").filter(|h| is_literal(h)) {
                    Pattern::Prefix(head.to_vec())
                } else if let Some(tail) = p.strip_prefix(b"*").filter(|t| is_literal(t)) {
                    Pattern::Suffix(tail.to_vec())
                } else {
                    Pattern::Glob(p.to_vec())
                }
            })
            .collect::<Vec<_>>();
        let firsts = first_bytes(&patterns);
        Namespace { patterns, firsts }
    }

    /// The same set plus one more pattern.
    pub fn with(mut self, pattern: &str) -> Namespace {
        self.patterns.extend(Namespace::new(&[pattern]).patterns);
        self.firsts = first_bytes(&self.patterns);
        self
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether `key` is a lock key.
    #[inline]
    pub fn matches(&self, key: &[u8]) -> bool {
        if let Some(set) = &self.firsts {
            match key.first() {
                Some(&c) if set[usize::from(c >> 6)] & (1 << (c & 63)) != 0 => {}
                _ => return false,
            }
        }
        self.patterns.iter().any(|p| match p {
            Pattern::Exact(e) => key == e.as_slice(),
            Pattern::Prefix(h) => key.starts_with(h),
            Pattern::Suffix(t) => key.ends_with(t),
            Pattern::Glob(g) => glob_match(g, key),
        })
    }
}

/// Redis's `stringmatchlen` (case-sensitive), iterative with one backtrack
/// point for `*`, so its cost is bounded by pattern × key length.
pub fn glob_match(pattern: &[u8], key: &[u8]) -> bool {
    let (mut p, mut k) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while k < key.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    while p < pattern.len() && pattern[p] == b'*' {
                        p += 1;
                    }
                    if p == pattern.len() {
                        return true;
                    }
                    star = Some((p, k));
                    continue;
                }
                b'?' => {
                    p += 1;
                    k += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class(pattern, p, key[k])
                        && matched
                    {
                        p = next;
                        k += 1;
                        continue;
                    }
                }
                b'\\' if p + 1 < pattern.len() => {
                    if pattern[p + 1] == key[k] {
                        p += 2;
                        k += 1;
                        continue;
                    }
                }
                c => {
                    if c == key[k] {
                        p += 1;
                        k += 1;
                        continue;
                    }
                }
            }
        }
        // Mismatch: let the last `*` swallow one more byte, or fail.
        match star {
            Some((sp, sk)) => {
                star = Some((sp, sk + 1));
                p = sp;
                k = sk + 1;
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the class starting at `pattern[open] == '['`.
/// Returns (matched, index after the class); `None` for an unclosed class,
/// which Redis treats as matching up to the pattern's end.
fn class(pattern: &[u8], open: usize, c: u8) -> Option<(bool, usize)> {
    let mut i = open + 1;
    let negate = pattern.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut matched = false;
    loop {
        let &pc = pattern.get(i)?;
        match pc {
            b']' => break,
            b'\\' if i + 1 < pattern.len() => {
                matched |= pattern[i + 1] == c;
                i += 2;
            }
            _ if pattern.get(i + 1) == Some(&b'-') && i + 2 < pattern.len() && pattern[i + 2] != b']' => {
                let (a, b) = (pc.min(pattern[i + 2]), pc.max(pattern[i + 2]));
                matched |= (a..=b).contains(&c);
                i += 3;
            }
            _ => {
                matched |= pc == c;
                i += 1;
            }
        }
    }
    Some((matched != negate, i + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiled_shapes() {
        let ns = Namespace::new(&["lock:*", "*:mutex", "leader", "job:?:[a-c]*"]);
        assert!(ns.matches(b"lock:"));
        assert!(ns.matches(b"lock:orders"));
        assert!(!ns.matches(b"locks:x"));
        assert!(ns.matches(b"db:mutex"));
        assert!(ns.matches(b"leader"));
        assert!(!ns.matches(b"leader2"));
        assert!(ns.matches(b"job:1:b-anything"));
        assert!(!ns.matches(b"job:1:d"));
        assert!(!Namespace::new::<&str>(&[]).matches(b"lock:x"));
    }

    #[test]
    fn the_first_byte_filter_never_changes_an_answer() {
        let sets: &[&[&str]] = &[
            &["lock:*"],
            &["lock:*", "leader", "job:?:[a-c]*", "m\\*x*"],
            &["*:mutex", "lock:*"],
            &["?ock:*"],
            &["[lm]ock:*"],
            &["\\*lock*"],
            &["Lock:*", "lock:*", "~x"],
        ];
        let keys: &[&[u8]] = &[
            b"",
            b"l",
            b"lock:",
            b"lock:a",
            b"Lock:a",
            b"mock:a",
            b"*lock:",
            b"m*x1",
            b"db:mutex",
            b"leader",
            b"job:1:b",
            b"key:000000012345",
            b"~x",
            b"\xfflock:",
            b"\x00",
        ];
        for set in sets {
            let ns = Namespace::new(set);
            let unfiltered = Namespace {
                firsts: None,
                ..ns.clone()
            };
            for k in keys {
                assert_eq!(ns.matches(k), unfiltered.matches(k), "{set:?} {k:?}");
            }
            let wider = ns.clone().with("*:fence");
            assert!(wider.firsts.is_none(), "{set:?}");
            assert!(wider.matches(b"x:fence"));
        }
        assert!(Namespace::new(&["lock:*"]).firsts.is_some());
        assert!(Namespace::new(&["*:lock"]).firsts.is_none());
        assert!(Namespace::new(&["lock:*"]).with("fence").matches(b"fence"));
    }

    #[test]
    fn glob_like_redis() {
        let m = |p: &str, k: &str| glob_match(p.as_bytes(), k.as_bytes());
        assert!(m("*", ""));
        assert!(m("a*b*c", "aXXbYYc"));
        assert!(!m("a*b*c", "aXXbYY"));
        assert!(m("h?llo", "hello"));
        assert!(m("h[^e]llo", "hallo"));
        assert!(!m("h[^e]llo", "hello"));
        assert!(m("h[a-b]llo", "hbllo"));
        assert!(m("h\\*llo", "h*llo"));
        assert!(!m("h\\*llo", "hello"));
        assert!(m("*a*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaab"));
        assert!(!m("*a*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaaa"));
    }
}
