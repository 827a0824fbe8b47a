//! Tests of the request parser: fixed cases, limits, and property tests
//! (any chunking parses the same; the one-pass path agrees with the general
//! one; garbage never panics).

use super::*;
use proptest::prelude::*;

fn parse_all(input: &[u8], chunks: &[usize]) -> Result<Vec<Vec<Vec<u8>>>, ProtocolError> {
    let mut p = RequestParser::new(Limits::default());
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut off = 0;
    let mut ci = 0;
    while off < input.len() {
        let step = chunks.get(ci).copied().unwrap_or(input.len()).max(1);
        ci += 1;
        let end = (off + step).min(input.len());
        buf.extend_from_slice(&input[off..end]);
        off = end;
        while let Some(r) = p.parse(&mut buf)? {
            out.push(r.args().map(|a| a.to_vec()).collect());
        }
    }
    Ok(out)
}

fn args(v: &[&str]) -> Vec<Vec<u8>> {
    v.iter().map(|s| s.as_bytes().to_vec()).collect()
}

#[test]
fn multibulk_and_inline() {
    let r = parse_all(b"*2\r\n$3\r\nGET\r\n$1\r\na\r\nPING\r\nset k \"a b\\x41\"\r\n\r\n", &[]).unwrap();
    assert_eq!(
        r,
        vec![args(&["GET", "a"]), args(&["PING"]), args(&["set", "k", "a bA"])]
    );
}

#[test]
fn raw_is_forwardable() {
    let mut p = RequestParser::default();
    let mut buf = BytesMut::from(&b"ping\r\n*1\r\n$4\r\nPING\r\n"[..]);
    let a = p.parse(&mut buf).unwrap().unwrap();
    assert_eq!(&a.raw[..], b"*1\r\n$4\r\nping\r\n");
    let b = p.parse(&mut buf).unwrap().unwrap();
    assert_eq!(&b.raw[..], b"*1\r\n$4\r\nPING\r\n");
    assert!(buf.is_empty());
}

#[test]
fn empty_multibulk_is_skipped() {
    assert_eq!(
        parse_all(b"*0\r\n*-1\r\n*1\r\n$1\r\nx\r\n", &[]).unwrap(),
        vec![args(&["x"])]
    );
}

#[test]
fn errors_match_redis() {
    let e = |input: &[u8]| parse_all(input, &[]).unwrap_err().0;
    assert_eq!(e(b"*x\r\n"), "invalid multibulk length");
    assert_eq!(e(b"*1\r\n+a\r\n"), "expected '$', got '+'");
    assert_eq!(e(b"*1\r\n$-5\r\n"), "invalid bulk length");
    assert_eq!(e(b"*1\r\n$999999999999\r\n"), "invalid bulk length");
    assert_eq!(e(b"*1\r\n$1\r\nab\r\n"), "bulk string not terminated by CRLF");
    assert_eq!(e(b"set a \"b\r\n"), "unbalanced quotes in request");
    assert_eq!(e(b"set a \"b\"c\r\n"), "unbalanced quotes in request");
}

#[test]
fn limits_are_enforced() {
    let limits = Limits {
        max_bulk: 10,
        max_args: 3,
        max_inline: 20,
        max_request: 50,
    };
    let mut p = RequestParser::new(limits);
    let mut b = BytesMut::from(&b"*1\r\n$11\r\n"[..]);
    assert_eq!(p.parse(&mut b).unwrap_err().0, "invalid bulk length");
    let mut p = RequestParser::new(limits);
    let mut b = BytesMut::from(&b"*4\r\n"[..]);
    assert_eq!(p.parse(&mut b).unwrap_err().0, "invalid multibulk length");
    let mut p = RequestParser::new(limits);
    let mut b = BytesMut::from(&[b'a'; 30][..]);
    assert_eq!(p.parse(&mut b).unwrap_err().0, "too big inline request");
    let mut p = RequestParser::new(limits);
    // The third bulk would end at byte 55 > 50: refused from its header,
    // before its bytes are buffered.
    let mut b = BytesMut::from(&b"*3\r\n$10\r\n0123456789\r\n$10\r\n0123456789\r\n$10\r\n"[..]);
    assert_eq!(
        p.parse(&mut b).unwrap_err().0,
        "request larger than the client query buffer limit"
    );
}

#[test]
fn large_request_is_scanned_once() {
    // 200k-argument MSET in 16 KiB reads: must stay linear.
    let n = 200_000;
    let mut input = Vec::new();
    input.extend_from_slice(format!("*{}\r\n$4\r\nMSET\r\n", 2 * n + 1).as_bytes());
    for i in 0..n {
        let k = format!("key:{i}");
        let v = format!("val:{i}");
        input.extend_from_slice(format!("${}\r\n{}\r\n${}\r\n{}\r\n", k.len(), k, v.len(), v).as_bytes());
    }
    let start = std::time::Instant::now();
    let r = parse_all(&input, &vec![16 * 1024; input.len() / (16 * 1024) + 1]).unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].len(), 2 * n + 1);
    // Generous bound (debug build); a quadratic parser takes minutes here.
    assert!(start.elapsed() < std::time::Duration::from_secs(20));
}

#[test]
fn length_lines_fail_alike_in_any_chunking() {
    // Found by fuzz/request_parser: under max_inline 1, a length line still
    // without its `\r` was refused past 1 byte when it came in pieces, and
    // accepted when it came whole.
    let limits = Limits {
        max_inline: 1,
        ..Limits::default()
    };
    let input = b"*-9223372036854775808\r\n*1\r\n$10\r\n0123456789\r\n";
    for step in [1, 3, input.len()] {
        let mut p = RequestParser::new(limits);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for c in input.chunks(step) {
            buf.extend_from_slice(c);
            while let Some(r) = p.parse(&mut buf).unwrap() {
                got.push(r.name().to_vec());
            }
        }
        assert_eq!(got, vec![b"0123456789".to_vec()], "chunks of {step}");
    }
    // Past 32 bytes the line is refused, whole or not.
    let long = [&b"*"[..], &[b'1'; 33], b"\r\n"].concat();
    assert_eq!(parse_all(&long, &[]).unwrap_err().0, "too big mbulk count string");
    assert_eq!(parse_all(&long, &[1; 40]).unwrap_err().0, "too big mbulk count string");
}

#[test]
fn parse_i64_like_redis() {
    assert_eq!(parse_i64(b"0"), Some(0));
    assert_eq!(parse_i64(b"-12"), Some(-12));
    assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
    assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
    assert_eq!(parse_i64(b"9223372036854775808"), None);
    assert_eq!(parse_i64(b"01"), None);
    assert_eq!(parse_i64(b"+1"), None);
    assert_eq!(parse_i64(b""), None);
    assert_eq!(parse_i64(b"-"), None);
}

fn encode(reqs: &[Vec<Vec<u8>>]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in reqs {
        out.extend_from_slice(&Request::from_args(r).raw);
    }
    out
}

proptest! {
    #[test]
    fn any_chunking_parses_the_same(
        reqs in prop::collection::vec(prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..6), 1..8),
        chunks in prop::collection::vec(1usize..17, 0..200),
    ) {
        let input = encode(&reqs);
        let whole = parse_all(&input, &[]).unwrap();
        let chunked = parse_all(&input, &chunks).unwrap();
        prop_assert_eq!(&whole, &reqs);
        prop_assert_eq!(chunked, reqs);
    }

    /// Whole input takes the one-pass path for every complete request;
    /// one byte at a time takes only the general one. Valid or corrupted,
    /// the two agree.
    #[test]
    fn the_fast_path_agrees_with_the_general_parser(
        reqs in prop::collection::vec(prop::collection::vec(prop::collection::vec(any::<u8>(), 0..20), 1..14), 1..5),
        flips in prop::collection::vec((any::<usize>(), any::<u8>()), 0..3),
    ) {
        let mut input = encode(&reqs);
        let n = input.len();
        for (i, b) in flips {
            input[i % n] = b;
        }
        let whole = parse_all(&input, &[]);
        let bytewise = parse_all(&input, &vec![1; n]);
        match (&whole, &bytewise) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
            (Err(_), Err(_)) => {}
            _ => prop_assert!(false, "whole {:?} vs bytewise {:?}", whole, bytewise),
        }
    }

    #[test]
    fn garbage_never_panics(input in prop::collection::vec(any::<u8>(), 0..300), chunks in prop::collection::vec(1usize..9, 0..60)) {
        let _ = parse_all(&input, &chunks);
    }
}

#[test]
fn arg_slices_agree_with_args_inline_and_past_the_inline_size() {
    for n in [1, 2, INLINE_ARGS - 1, INLINE_ARGS, INLINE_ARGS + 1, 40] {
        let words: Vec<String> = (0..n).map(|i| format!("a{i}")).collect();
        let req = Request::from_args(&words);
        let (mut inline, mut heap) = ([&[][..]; INLINE_ARGS], Vec::new());
        let got = req.arg_slices(&mut inline, &mut heap);
        let want: Vec<&[u8]> = req.args().collect();
        assert_eq!(got, want.as_slice(), "{n} arguments");
        assert_eq!(heap.is_empty(), n <= INLINE_ARGS, "{n} arguments");
        assert_eq!(req.arg_list().as_slice(), want.as_slice());
    }
}
