//! Redis 7.0's special key procedures (db.c: `sortGetKeys`, `migrateGetKeys`,
//! `evalGetKeys`, ...) for the commands whose key specs cannot say where
//! their keys are, and the C-style argument parsing those procedures rely on.
//! [`super::keys`] falls back to them exactly where Redis does.

use std::cmp::Ordering;

// ---------------------------------------------------------------------------------------
// The special key procedures of Redis 7.0 (db.c), for the commands that have one.

#[derive(Debug, Clone, Copy)]
pub(super) enum Proc {
    /// `genericGetKeys(store, keycount, firstkey, step)`.
    Generic {
        store: usize,
        count: usize,
        first: usize,
        step: usize,
    },
    /// The key is always argument 1 (SORT_RO, SET, BITFIELD).
    FirstArg,
    Sort,
    Migrate,
    Georadius,
    Xread,
}

pub(super) fn special_proc(name: &str) -> Option<Proc> {
    const STORE: Proc = Proc::Generic {
        store: 1,
        count: 2,
        first: 3,
        step: 1,
    };
    const AT1: Proc = Proc::Generic {
        store: 0,
        count: 1,
        first: 2,
        step: 1,
    };
    const AT2: Proc = Proc::Generic {
        store: 0,
        count: 2,
        first: 3,
        step: 1,
    };
    Some(match name {
        "zunionstore" | "zinterstore" | "zdiffstore" => STORE,
        "zunion" | "zinter" | "zdiff" | "zintercard" | "sintercard" | "lmpop" | "zmpop" => AT1,
        "eval" | "evalsha" | "eval_ro" | "evalsha_ro" | "fcall" | "fcall_ro" | "blmpop" | "bzmpop" => AT2,
        "sort_ro" | "set" | "bitfield" => Proc::FirstArg,
        "sort" => Proc::Sort,
        "migrate" => Proc::Migrate,
        "georadius" | "georadiusbymember" => Proc::Georadius,
        "xread" | "xreadgroup" => Proc::Xread,
        _ => return None,
    })
}

/// Runs a special procedure; returns true when the arguments are malformed beyond what
/// the (lenient) procedure reports by finding no key.
pub(super) fn run_proc(p: Proc, args: &[&[u8]], out: &mut Vec<usize>) -> bool {
    let argc = args.len();
    match p {
        Proc::Generic {
            store,
            count,
            first,
            step,
        } => {
            let Some(raw) = args.get(count) else {
                return true;
            };
            // Redis uses atoi() here (lenient), though the command itself parses strictly.
            let num = atoi(raw) as i64;
            if num < 1 || num > (argc.saturating_sub(first) / step) as i64 {
                return false; // no keys; the emptiness check decides
            }
            let num = num as usize;
            out.extend((0..num).map(|i| first + i * step));
            if store != 0 {
                out.push(store);
            }
            false
        }
        Proc::FirstArg => {
            if argc > 1 {
                out.push(1);
            }
            false
        }
        Proc::Sort => {
            if argc < 2 {
                return false;
            }
            out.push(1);
            let mut store = None;
            let mut i = 2;
            while i < argc {
                let a = args[i];
                if c_eq_ignore_case(a, "limit") {
                    i += 2;
                } else if c_eq_ignore_case(a, "store") && i + 1 < argc {
                    // The last STORE wins, as in SORT itself.
                    store = Some(i + 1);
                } else if c_eq_ignore_case(a, "get") || c_eq_ignore_case(a, "by") {
                    i += 1;
                }
                i += 1;
            }
            out.extend(store);
            false
        }
        Proc::Migrate => {
            // MIGRATE host port key|"" db timeout [COPY] [REPLACE] [AUTH pw]
            //     [AUTH2 user pw] [KEYS key ...]
            let mut first = 3;
            let mut num = 1;
            let mut i = 6;
            while i < argc {
                let a = args[i];
                if c_eq_ignore_case(a, "keys") {
                    if args[3].is_empty() {
                        first = i + 1;
                        num = argc - first;
                    } else {
                        num = 0; // syntax error: KEYS needs an empty key argument
                    }
                    break;
                }
                if c_eq_ignore_case(a, "auth") {
                    i += 1;
                } else if c_eq_ignore_case(a, "auth2") {
                    i += 2;
                }
                i += 1;
            }
            if first + num > argc {
                return true;
            }
            out.extend(first..first + num);
            false
        }
        Proc::Georadius => {
            if argc < 2 {
                return false;
            }
            out.push(1);
            let mut stored = None;
            let mut i = 5;
            while i < argc {
                let a = args[i];
                if (c_eq_ignore_case(a, "store") || c_eq_ignore_case(a, "storedist")) && i + 1 < argc {
                    stored = Some(i + 1);
                    i += 1;
                }
                i += 1;
            }
            out.extend(stored);
            false
        }
        Proc::Xread => {
            let mut streams_pos = None;
            let mut i = 1;
            while i < argc {
                let a = args[i];
                if c_eq_ignore_case(a, "block") || c_eq_ignore_case(a, "count") {
                    i += 1;
                } else if c_eq_ignore_case(a, "group") {
                    i += 2;
                } else if c_eq_ignore_case(a, "noack") {
                } else if c_eq_ignore_case(a, "streams") {
                    streams_pos = Some(i);
                    break;
                } else {
                    break;
                }
                i += 1;
            }
            let Some(pos) = streams_pos else {
                return false;
            };
            let num = argc - pos - 1;
            if num == 0 || num & 1 != 0 {
                return false;
            }
            out.extend(pos + 1..pos + 1 + num / 2);
            false
        }
    }
}

// ---------------------------------------------------------------------------------------
// C-string helpers: Redis compares option names with strcasecmp() and parses counts with
// string2ll() or atoi(), which see an argument only up to its first NUL byte.

/// The argument as C sees it: up to the first NUL.
fn c_str(arg: &[u8]) -> &[u8] {
    match arg.iter().position(|&b| b == 0) {
        Some(n) => &arg[..n],
        None => arg,
    }
}

/// `strcasecmp(arg, word) == 0` (ASCII case folding).
pub(super) fn c_eq_ignore_case(arg: &[u8], word: &str) -> bool {
    c_str(arg).eq_ignore_ascii_case(word.as_bytes())
}

/// Redis's strict `string2ll`: optional `-`, no `+`, no spaces, no leading zeros (other
/// than "0" itself), fits in i64.
pub(super) fn string2ll(s: &[u8]) -> Option<i64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    if s == b"0" {
        return Some(0);
    }
    let (neg, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    match digits.first() {
        Some(b'1'..=b'9') => {}
        _ => return None,
    }
    let mut v: u64 = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add((b - b'0') as u64)?;
    }
    if neg {
        match v.cmp(&(i64::MAX as u64 + 1)) {
            Ordering::Greater => None,
            Ordering::Equal => Some(i64::MIN),
            Ordering::Less => Some(-(v as i64)),
        }
    } else {
        i64::try_from(v).ok()
    }
}

/// glibc `atoi`: `(int) strtol(s, NULL, 10)` — leading whitespace, optional sign, digits up
/// to the first non-digit, saturating at the `long` range, then truncated to `int`.
fn atoi(s: &[u8]) -> i32 {
    let s = c_str(s);
    let mut i = 0;
    while i < s.len() && matches!(s[i], b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r') {
        i += 1;
    }
    let mut neg = false;
    if let Some(&c @ (b'+' | b'-')) = s.get(i) {
        neg = c == b'-';
        i += 1;
    }
    let mut v: i64 = 0;
    let mut overflow = false;
    while let Some(d) = s.get(i).filter(|b| b.is_ascii_digit()) {
        let d = (d - b'0') as i64;
        match v
            .checked_mul(10)
            .and_then(|x| if neg { x.checked_sub(d) } else { x.checked_add(d) })
        {
            Some(x) => v = x,
            None => overflow = true,
        }
        if overflow {
            v = if neg { i64::MIN } else { i64::MAX };
            break;
        }
        i += 1;
    }
    v as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_parsers_match_c() {
        assert_eq!(string2ll(b"0"), Some(0));
        assert_eq!(string2ll(b"12"), Some(12));
        assert_eq!(string2ll(b"-12"), Some(-12));
        assert_eq!(string2ll(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(string2ll(b"-9223372036854775808"), Some(i64::MIN));
        for bad in [
            &b""[..],
            b"-",
            b"+1",
            b"01",
            b"-0",
            b" 1",
            b"1 ",
            b"1x",
            b"9223372036854775808",
        ] {
            assert_eq!(string2ll(bad), None, "{bad:?}");
        }
        assert_eq!(atoi(b" +7x"), 7);
        assert_eq!(atoi(b"-3"), -3);
        assert_eq!(atoi(b"x"), 0);
        assert_eq!(atoi(b"2\x003"), 2);
        assert_eq!(atoi(b"4294967297"), 1);
        assert_eq!(atoi(b"99999999999999999999999"), -1);
    }
}
