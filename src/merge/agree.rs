//! Merges for commands that change or read every shard's server state
//! (FUNCTION ..., CONFIG ...): unlike the data merges in [`super`], a shard
//! that fails or answers differently is named in the reply, never hidden,
//! since the shards then disagree and an operator has to repair them.

use std::sync::Arc;

use bytes::Bytes;

use crate::backend::BackendResult;
use crate::protocol::{Encoder, reply};

/// One shard's outcome, as text for an error message.
enum Outcome {
    Reply(Bytes),
    Failed(String),
}

fn outcomes(parts: Vec<Option<BackendResult>>) -> Vec<Outcome> {
    parts
        .into_iter()
        .map(|p| match p {
            Some(Ok(f)) if reply::is_error(&f) => Outcome::Failed(error_text(&f)),
            Some(Ok(f)) => Outcome::Reply(f),
            Some(Err(e)) => Outcome::Failed(e.to_string()),
            None => Outcome::Failed("no reply".into()),
        })
        .collect()
}

/// The text of an error frame (`-ERR x\r\n` or a RESP3 blob error).
fn error_text(f: &[u8]) -> String {
    let body = match f.first() {
        Some(b'!') => f.iter().position(|&c| c == b'\n').map_or(&f[1..], |i| &f[i + 1..]),
        _ => &f[1..],
    };
    String::from_utf8_lossy(body).trim_end().to_string()
}

fn name(names: &[Arc<str>], i: usize) -> &str {
    names.get(i).map_or("?", |n| n)
}

/// `what failed on b (ERR x), c (...); it succeeded on a: the shards now
/// disagree ...`: for commands that change the shards.
fn partial_failure(what: &str, names: &[Arc<str>], outs: &[Outcome]) -> String {
    let mut s = failed_on(what, names, outs);
    s.push_str(": the shards now disagree, repeat it once every shard is reachable");
    s
}

/// `what failed on b (ERR x), c (...); it succeeded on a`.
fn failed_on(what: &str, names: &[Arc<str>], outs: &[Outcome]) -> String {
    let failed: Vec<String> = outs
        .iter()
        .enumerate()
        .filter_map(|(i, o)| match o {
            Outcome::Failed(why) => Some(format!("{} ({why})", name(names, i))),
            Outcome::Reply(_) => None,
        })
        .collect();
    let ok: Vec<&str> = outs
        .iter()
        .enumerate()
        .filter(|(_, o)| matches!(o, Outcome::Reply(_)))
        .map(|(i, _)| name(names, i))
        .collect();
    let mut s = format!("ERR shardis: {what} failed on shard(s) {}", failed.join(", "));
    if !ok.is_empty() {
        s.push_str(&format!("; it succeeded on {}", ok.join(", ")));
    }
    s
}

/// Every shard must give the same successful reply, which is sent; the
/// same error from every shard is sent as it is (FUNCTION LOAD of a library
/// that exists: Redis's own error); anything else names the shards.
pub fn agree(what: &str, names: &[Arc<str>], parts: Vec<Option<BackendResult>>, enc: &mut Encoder<'_>) {
    let outs = outcomes(parts);
    match outs.first() {
        None => enc.error("ERR shardis: no shards"),
        Some(Outcome::Reply(first)) if outs.iter().all(|o| matches!(o, Outcome::Reply(f) if f == first)) => {
            enc.raw(first)
        }
        Some(Outcome::Failed(first)) if outs.iter().all(|o| matches!(o, Outcome::Failed(w) if w == first)) => {
            enc.error(first)
        }
        Some(_) if outs.iter().all(|o| matches!(o, Outcome::Reply(_))) => enc.error(&format!(
            "ERR shardis: {what}: the shards answered differently ({})",
            names.join(", ")
        )),
        Some(_) => enc.error(&partial_failure(what, names, &outs)),
    }
}

/// FUNCTION KILL / SCRIPT KILL: OK when some shard killed a script;
/// otherwise the first shard's error (NOTBUSY when none runs one).
pub fn any_ok(parts: Vec<Option<BackendResult>>, enc: &mut Encoder<'_>) {
    let outs = outcomes(parts);
    if let Some(Outcome::Reply(f)) = outs.iter().find(|o| matches!(o, Outcome::Reply(_))) {
        return enc.raw(f);
    }
    match outs.first() {
        Some(Outcome::Failed(why)) => enc.error(why),
        _ => enc.error("ERR shardis: no shards"),
    }
}

/// FUNCTION LIST: the libraries by name, each as the first shard that has
/// it reports it. A library missing on some shard is an error naming the
/// library and the shards, so a partial load is seen, not hidden.
pub fn function_list(names: &[Arc<str>], parts: Vec<Option<BackendResult>>, enc: &mut Encoder<'_>) {
    let outs = outcomes(parts);
    if outs.iter().any(|o| matches!(o, Outcome::Failed(_))) {
        return enc.error(&partial_failure("FUNCTION LIST", names, &outs));
    }
    // (library name, its entry, the shards that have it)
    let mut libs: Vec<(Bytes, Bytes, Vec<usize>)> = Vec::new();
    for (i, o) in outs.iter().enumerate() {
        let Outcome::Reply(f) = o else { continue };
        let Some(entries) = reply::elements(f) else {
            return enc.error("ERR shardis: unexpected reply from backend to FUNCTION LIST");
        };
        for e in entries {
            let Some(lib) = library_name(&e) else {
                return enc.error("ERR shardis: unexpected reply from backend to FUNCTION LIST");
            };
            match libs.iter_mut().find(|(n, _, _)| *n == lib) {
                Some((_, _, on)) => on.push(i),
                None => libs.push((lib, e, vec![i])),
            }
        }
    }
    if let Some((lib, _, on)) = libs.iter().find(|(_, _, on)| on.len() < outs.len()) {
        let missing: Vec<&str> = (0..outs.len())
            .filter(|i| !on.contains(i))
            .map(|i| name(names, i))
            .collect();
        let have: Vec<&str> = on.iter().map(|&i| name(names, i)).collect();
        return enc.error(&format!(
            "ERR shardis: library '{}' is loaded on shard(s) {} but not on {}: FUNCTION LOAD REPLACE it (or FUNCTION DELETE it) through shardis to make them agree",
            String::from_utf8_lossy(lib),
            have.join(", "),
            missing.join(", ")
        ));
    }
    enc.array(libs.len());
    for (_, entry, _) in &libs {
        enc.raw(entry);
    }
}

/// The `library_name` field of a FUNCTION LIST entry (a map in RESP3, a
/// flat array in RESP2).
fn library_name(entry: &Bytes) -> Option<Bytes> {
    let fields = reply::elements(entry)?;
    fields
        .chunks(2)
        .find(|kv| kv.len() == 2 && reply::as_bytes(&kv[0]).is_some_and(|k| &k[..] == b"library_name"))
        .and_then(|kv| reply::as_bytes(&kv[1]))
}

/// One shard's FUNCTION STATS reply, taken apart.
struct Stats {
    /// The reply's fields, keys and values alternating (a map in RESP3, a
    /// flat array in RESP2).
    fields: Vec<Bytes>,
    /// `running_script`'s value: null, or the script's name, command and
    /// duration.
    running: Bytes,
    /// `engines`: each engine's name and its counts (name, value frame).
    engines: Vec<(Bytes, Vec<(Bytes, Bytes)>)>,
}

/// The keys and values of a map reply (or a RESP2 flat array), if it has
/// an even number of elements.
fn pairs(frame: &Bytes) -> Option<Vec<(Bytes, Bytes)>> {
    let e = reply::elements(frame)?;
    (e.len() % 2 == 0).then(|| e.chunks(2).map(|kv| (kv[0].clone(), kv[1].clone())).collect())
}

fn field<'a>(kv: &'a [(Bytes, Bytes)], key: &[u8]) -> Option<&'a Bytes> {
    kv.iter()
        .find(|(k, _)| reply::as_bytes(k).is_some_and(|k| &k[..] == key))
        .map(|(_, v)| v)
}

impl Stats {
    fn parse(f: &Bytes) -> Option<Stats> {
        let kv = pairs(f)?;
        let running = field(&kv, b"running_script")?.clone();
        let engines = pairs(field(&kv, b"engines")?)?
            .into_iter()
            .map(|(name, counts)| Some((name, pairs(&counts)?)))
            .collect::<Option<Vec<_>>>()?;
        let fields = kv.into_iter().flat_map(|(k, v)| [k, v]).collect();
        Some(Stats {
            fields,
            running,
            engines,
        })
    }

    /// `LUA libraries_count=2 functions_count=3`, for an error message.
    fn counts(&self) -> String {
        let text = |f: &Bytes| match reply::as_integer(f) {
            Some(n) => n.to_string(),
            None => reply::as_bytes(f).map_or_else(|| "?".into(), |b| String::from_utf8_lossy(&b).into_owned()),
        };
        let engines: Vec<String> = self
            .engines
            .iter()
            .map(|(name, counts)| {
                let mut s = text(name);
                for (k, v) in counts {
                    s.push_str(&format!(" {}={}", text(k), text(v)));
                }
                s
            })
            .collect();
        if engines.is_empty() {
            "no engines".into()
        } else {
            engines.join(", ")
        }
    }
}

/// FUNCTION STATS, as one Redis answers it: `running_script` is the script
/// running on any shard (the first such shard's, in Redis's shape: one
/// script, with its name, command and duration), null when none runs one;
/// `engines` is the shards' libraries and functions, the same on every
/// shard since FUNCTION LOAD goes to all of them. Shards whose counts
/// differ are named with their counts, as FUNCTION LIST names a library
/// missing on some shard; a shard that fails is named, as in every merge
/// here.
pub fn function_stats(names: &[Arc<str>], parts: Vec<Option<BackendResult>>, enc: &mut Encoder<'_>) {
    let outs = outcomes(parts);
    if outs.iter().any(|o| matches!(o, Outcome::Failed(_))) {
        return enc.error(&failed_on("FUNCTION STATS", names, &outs));
    }
    let mut stats = Vec::with_capacity(outs.len());
    for o in &outs {
        let Outcome::Reply(f) = o else { continue };
        match Stats::parse(f) {
            Some(s) => stats.push(s),
            None => return enc.error("ERR shardis: unexpected reply from backend to FUNCTION STATS"),
        }
    }
    let Some(first) = stats.first() else {
        return enc.error("ERR shardis: no shards");
    };
    if stats.iter().any(|s| s.engines != first.engines) {
        // The shards grouped by their counts, in shard order.
        let mut groups: Vec<(String, Vec<&str>)> = Vec::new();
        for (i, s) in stats.iter().enumerate() {
            let counts = s.counts();
            match groups.iter_mut().find(|(c, _)| *c == counts) {
                Some((_, on)) => on.push(name(names, i)),
                None => groups.push((counts, vec![name(names, i)])),
            }
        }
        let groups: Vec<String> = groups.iter().map(|(c, on)| format!("{}: {c}", on.join(", "))).collect();
        return enc.error(&format!(
            "ERR shardis: the shards' function libraries differ ({}): FUNCTION LIST names the library to FUNCTION LOAD REPLACE (or FUNCTION DELETE) through shardis to make them agree",
            groups.join("; ")
        ));
    }
    let running = stats
        .iter()
        .map(|s| &s.running)
        .find(|r| !reply::is_null(r))
        .unwrap_or(&first.running);
    enc.map(first.fields.len() / 2);
    for kv in first.fields.chunks(2) {
        enc.raw(&kv[0]);
        if reply::as_bytes(&kv[0]).is_some_and(|k| &k[..] == b"running_script") {
            enc.raw(running);
        } else {
            enc.raw(&kv[1]);
        }
    }
}

/// CONFIG GET: the first shard's answer, with the values the proxy owns
/// (`maxclients`, `timeout`) replaced by the proxy's own.
pub fn config_get(own: &[(&str, String)], parts: Vec<Option<BackendResult>>, enc: &mut Encoder<'_>) {
    let outs = outcomes(parts);
    let Some(Outcome::Reply(f)) = outs.iter().find(|o| matches!(o, Outcome::Reply(_))) else {
        return match outs.first() {
            Some(Outcome::Failed(why)) => enc.error(why),
            _ => enc.error("ERR shardis: no shards"),
        };
    };
    let Some(fields) = reply::elements(f) else {
        return enc.error("ERR shardis: unexpected reply from backend to CONFIG GET");
    };
    // A reply with a key but no value (odd length) gets a null value: one
    // more pair, or the client reads a frame too many (fuzz/merge).
    enc.map(fields.len().div_ceil(2));
    for kv in fields.chunks(2) {
        let key = reply::as_bytes(&kv[0]);
        let mine = key
            .as_ref()
            .and_then(|k| own.iter().find(|(n, _)| n.as_bytes().eq_ignore_ascii_case(k)));
        enc.raw(&kv[0]);
        match (mine, kv.get(1)) {
            (Some((_, v)), _) => enc.bulk(v.as_bytes()),
            (None, Some(v)) => enc.raw(v),
            (None, None) => enc.null(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{BackendError, BackendErrorKind};
    use crate::protocol::Protocol;
    use bytes::BytesMut;

    fn names() -> Vec<Arc<str>> {
        vec!["a".into(), "b".into(), "c".into()]
    }

    fn ok(f: &'static [u8]) -> Option<BackendResult> {
        Some(Ok(Bytes::from_static(f)))
    }

    fn run(f: impl FnOnce(&mut Encoder<'_>)) -> String {
        let mut buf = BytesMut::new();
        f(&mut Encoder::new(&mut buf, Protocol::Resp2));
        String::from_utf8_lossy(&buf).into_owned()
    }

    #[test]
    fn agree_names_failing_shards() {
        let n = names();
        let all = vec![ok(b"$3\r\nlib\r\n"), ok(b"$3\r\nlib\r\n"), ok(b"$3\r\nlib\r\n")];
        assert_eq!(run(|e| agree("FUNCTION LOAD", &n, all, e)), "$3\r\nlib\r\n");
        let same_err = vec![ok(b"-ERR x\r\n"), ok(b"-ERR x\r\n"), ok(b"-ERR x\r\n")];
        assert_eq!(run(|e| agree("FUNCTION LOAD", &n, same_err, e)), "-ERR x\r\n");
        let down = Some(Err(BackendError::new(
            BackendErrorKind::Unavailable,
            &"b".into(),
            "down",
        )));
        let mixed = vec![ok(b"+OK\r\n"), down, ok(b"-ERR bad\r\n")];
        let out = run(|e| agree("CONFIG SET", &n, mixed, e));
        assert!(out.starts_with("-ERR shardis: CONFIG SET failed on shard(s) b (ERR backend b unavailable: down), c (ERR bad); it succeeded on a"), "{out}");
    }

    #[test]
    fn function_list_reports_a_partial_library() {
        let n = names();
        let lib = |name: &str| format!("*2\r\n$12\r\nlibrary_name\r\n${}\r\n{name}\r\n", name.len());
        let both = format!("*2\r\n{}{}", lib("x"), lib("y"));
        let one = format!("*1\r\n{}", lib("x"));
        let p = |s: &String| Some(Ok(Bytes::from(s.clone())));
        let out = run(|e| function_list(&n, vec![p(&both), p(&both), p(&both)], e));
        assert_eq!(out, both);
        let out = run(|e| function_list(&n, vec![p(&both), p(&one), p(&both)], e));
        assert!(
            out.starts_with("-ERR shardis: library 'y' is loaded on shard(s) a, c but not on b"),
            "{out}"
        );
    }

    /// Redis 7.0's FUNCTION STATS (RESP2), idle or running `spin`.
    fn stats(running: &str, libs: u8, funcs: u8) -> String {
        format!(
            "*4\r\n$14\r\nrunning_script\r\n{running}$7\r\nengines\r\n*2\r\n$3\r\nLUA\r\n*4\r\n$15\r\nlibraries_count\r\n:{libs}\r\n$15\r\nfunctions_count\r\n:{funcs}\r\n"
        )
    }
    const SPIN: &str = "*6\r\n$4\r\nname\r\n$4\r\nspin\r\n$7\r\ncommand\r\n*3\r\n$5\r\nFCALL\r\n$4\r\nspin\r\n$1\r\n0\r\n$11\r\nduration_ms\r\n:450\r\n";

    #[test]
    fn function_stats_shows_the_script_running_on_any_shard() {
        let n = names();
        let p = |s: String| Some(Ok(Bytes::from(s)));
        let idle = stats("$-1\r\n", 1, 3);
        let out = run(|e| function_stats(&n, vec![p(idle.clone()), p(idle.clone()), p(idle.clone())], e));
        assert_eq!(out, idle);
        let busy = stats(SPIN, 1, 3);
        let out = run(|e| function_stats(&n, vec![p(idle.clone()), p(busy.clone()), p(idle.clone())], e));
        assert_eq!(out, busy);
        // RESP3: a map with a null, passed through as it is.
        let r3 = "%2\r\n$14\r\nrunning_script\r\n_\r\n$7\r\nengines\r\n%1\r\n$3\r\nLUA\r\n%2\r\n$15\r\nlibraries_count\r\n:1\r\n$15\r\nfunctions_count\r\n:1\r\n";
        let mut buf = bytes::BytesMut::new();
        function_stats(
            &n,
            vec![p(r3.into()), p(r3.into())],
            &mut Encoder::new(&mut buf, Protocol::Resp3),
        );
        assert_eq!(&buf[..], r3.as_bytes());
    }

    #[test]
    fn function_stats_names_shards_that_differ_or_fail() {
        let n = names();
        let p = |s: String| Some(Ok(Bytes::from(s)));
        let out = run(|e| {
            function_stats(
                &n,
                vec![
                    p(stats("$-1\r\n", 2, 4)),
                    p(stats("$-1\r\n", 1, 3)),
                    p(stats(SPIN, 2, 4)),
                ],
                e,
            )
        });
        assert!(
            out.starts_with("-ERR shardis: the shards' function libraries differ (a, c: LUA libraries_count=2 functions_count=4; b: LUA libraries_count=1 functions_count=3)"),
            "{out}"
        );
        let down = Some(Err(BackendError::new(
            BackendErrorKind::Unavailable,
            &"b".into(),
            "down",
        )));
        let idle = stats("$-1\r\n", 1, 3);
        let out = run(|e| function_stats(&n, vec![p(idle.clone()), down, p(idle.clone())], e));
        assert_eq!(
            out,
            "-ERR shardis: FUNCTION STATS failed on shard(s) b (ERR backend b unavailable: down); it succeeded on a, c\r\n"
        );
        let out = run(|e| function_stats(&n, vec![ok(b"*2\r\n$1\r\na\r\n$1\r\nb\r\n")], e));
        assert!(out.starts_with("-ERR shardis: unexpected reply"), "{out}");
    }

    #[test]
    fn config_get_of_an_odd_reply_is_one_frame() {
        // Found by fuzz/merge: 3 fields made a map of 1 pair followed by 2
        // more frames, and the client's replies went out of step.
        let shard = b"*3\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\nb\r\n";
        let out = run(|e| config_get(&[], vec![ok(shard)], e));
        assert_eq!(out, "*4\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\nb\r\n$-1\r\n");
    }

    #[test]
    fn config_get_uses_the_proxys_own_values() {
        let own = [("maxclients", "5".to_string())];
        let shard = b"*4\r\n$10\r\nmaxclients\r\n$5\r\n10000\r\n$7\r\nlatency\r\n$1\r\n0\r\n";
        let out = run(|e| config_get(&own, vec![ok(shard), ok(shard)], e));
        assert_eq!(
            out,
            "*4\r\n$10\r\nmaxclients\r\n$1\r\n5\r\n$7\r\nlatency\r\n$1\r\n0\r\n"
        );
    }
}
