//! Redlock arithmetic, free of I/O: quorum sizes, the validity window, and
//! how the members' answers combine into one reply.
//!
//! The members of one request are a list (the union of the lock groups that
//! must agree, see [`crate::lock::LockGroup`]); each group is a list of
//! positions into it. A decision needs a majority of *every* group: during a
//! lock-group change the old and the new group must both agree.

use std::time::Duration;

use bytes::Bytes;

use crate::backend::BackendResult;
use crate::protocol::reply;

/// Majority of `n` members.
pub fn quorum(n: usize) -> usize {
    n / 2 + 1
}

/// Validity left after an acquisition that took `elapsed`, in microseconds:
/// `ttl − elapsed − (ttl × drift_factor + 2 ms)`. The lock is granted only
/// when this is positive. The 2 ms cover Redis's 1 ms expiry precision plus
/// a minimum drift for short TTLs, as in the reference implementations.
pub fn validity_us(ttl_ms: u64, elapsed: Duration, drift_factor: f64) -> i64 {
    let ttl_us = ttl_ms.saturating_mul(1000).min(i64::MAX as u64 / 2) as i64;
    let drift_us = (ttl_us as f64 * drift_factor) as i64 + 2000;
    let elapsed_us = elapsed.as_micros().min(i64::MAX as u128 / 2) as i64;
    ttl_us - elapsed_us - drift_us
}

/// How long an acquisition waits for members: the configured member timeout,
/// but never more than a third of the TTL, so that a slow member cannot use
/// up the validity the client is asking for.
pub fn acquire_wait(member_timeout: Duration, ttl_ms: Option<u64>) -> Duration {
    match ttl_ms {
        Some(ttl) => {
            member_timeout.min(Duration::from_micros(ttl.saturating_mul(1000) / 3).max(Duration::from_millis(1)))
        }
        None => member_timeout,
    }
}

/// One member's answer to the acquisition script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcquireVote {
    /// Set; carries the member's fencing counter.
    Granted(u64),
    /// The key exists (held by someone).
    Held,
    /// No usable answer: error, timeout, unknown member.
    Failed,
    /// Not answered yet.
    Pending,
}

/// Reads a member's answer to the acquisition script (`:counter` or `:-1`).
pub fn acquire_vote(r: Option<&BackendResult>) -> AcquireVote {
    match r {
        None => AcquireVote::Pending,
        Some(Err(_)) => AcquireVote::Failed,
        Some(Ok(f)) => match reply::as_integer(f) {
            Some(n) if n >= 0 => AcquireVote::Granted(n as u64),
            Some(-1) => AcquireVote::Held,
            _ => AcquireVote::Failed,
        },
    }
}

/// Where an acquisition stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcquireState {
    /// Every group has a majority of grants.
    Granted,
    /// Some group can no longer reach a majority, mostly because members hold the key.
    Denied,
    /// Some group can no longer reach a majority because too many members failed.
    NoQuorum,
    /// Not decided yet.
    Open,
}

/// Tallies the votes over every group.
pub fn acquire_state(votes: &[AcquireVote], groups: &[Vec<usize>]) -> AcquireState {
    let mut all_granted = true;
    for g in groups {
        let q = quorum(g.len());
        let count = |want: fn(&AcquireVote) -> bool| g.iter().filter(|&&i| want(&votes[i])).count();
        let granted = count(|v| matches!(v, AcquireVote::Granted(_)));
        let held = count(|v| *v == AcquireVote::Held);
        let failed = count(|v| *v == AcquireVote::Failed);
        if granted < q {
            all_granted = false;
        }
        if g.len() - held - failed < q {
            // Which of the two made the majority impossible: failures alone?
            return if g.len() - failed < q {
                AcquireState::NoQuorum
            } else {
                AcquireState::Denied
            };
        }
    }
    if all_granted {
        AcquireState::Granted
    } else {
        AcquireState::Open
    }
}

/// Whether every group has a majority of members that answered at all
/// (backend errors and timeouts do not count; error replies do).
pub fn reachable(results: &[Option<BackendResult>], groups: &[Vec<usize>]) -> bool {
    groups
        .iter()
        .all(|g| g.iter().filter(|&&i| matches!(results[i], Some(Ok(_)))).count() >= quorum(g.len()))
}

/// The reply a majority of one group sent, byte for byte.
fn agreed_in(results: &[Option<BackendResult>], group: &[usize]) -> Option<Bytes> {
    let frame = |i: usize| match &results[i] {
        Some(Ok(f)) => Some(f),
        _ => None,
    };
    group.iter().find_map(|&i| {
        let candidate = frame(i)?;
        let votes = group.iter().filter(|&&j| frame(j) == Some(candidate)).count();
        (votes >= quorum(group.len())).then(|| candidate.clone())
    })
}

/// "Nothing there": a null, `:0`, `:-2` or `+none` reply.
fn is_empty_answer(f: &[u8]) -> bool {
    reply::is_null(f) || f == b":0\r\n" || f == b":-2\r\n" || f == b"+none\r\n"
}

/// The majority's reply. Every group must have one; when the groups of a
/// lock-group change disagree, a lock granted before the change lives only
/// on the old group, so the answer that finds something (a value, a count,
/// a release that happened) wins over one that finds nothing.
pub fn agreed(results: &[Option<BackendResult>], groups: &[Vec<usize>]) -> Option<Bytes> {
    let answers: Vec<Bytes> = groups.iter().map(|g| agreed_in(results, g)).collect::<Option<_>>()?;
    let first = answers.first()?;
    if answers.iter().all(|a| a == first) {
        return Some(first.clone());
    }
    Some(answers.iter().find(|a| !is_empty_answer(a)).unwrap_or(first).clone())
}

/// PTTL/TTL by majority: the time until fewer than a majority of the group
/// still holds the key, i.e. the quorum-th largest answer (no expiry, `-1`,
/// ranks above everything; a missing key, `-2`, below). Over the groups of a
/// lock-group change, the largest: the key is held while any group still
/// holds it. `None` when a group has fewer than a majority of answers.
pub fn majority_ttl(results: &[Option<BackendResult>], groups: &[Vec<usize>]) -> Option<i64> {
    let mut best: Option<i64> = None;
    for g in groups {
        let mut vals: Vec<i64> = g
            .iter()
            .filter_map(|&i| match &results[i] {
                Some(Ok(f)) => reply::as_integer(f),
                _ => None,
            })
            .map(|v| if v == -1 { i64::MAX } else { v })
            .collect();
        let q = quorum(g.len());
        if vals.len() < q {
            return None;
        }
        vals.sort_unstable_by(|a, b| b.cmp(a));
        let v = vals[q - 1];
        best = Some(best.map_or(v, |b| b.max(v)));
    }
    best.map(|v| if v == i64::MAX { -1 } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{BackendError, BackendErrorKind};

    fn ok(s: &'static [u8]) -> Option<BackendResult> {
        Some(Ok(Bytes::from_static(s)))
    }
    fn err() -> Option<BackendResult> {
        Some(Err(BackendError::new(
            BackendErrorKind::Unavailable,
            &"x".into(),
            "down",
        )))
    }

    #[test]
    fn quorum_sizes() {
        assert_eq!([1, 2, 3, 4, 5, 6, 7].map(quorum), [1, 2, 2, 3, 3, 4, 4]);
    }

    #[test]
    fn validity_window() {
        // 10 s TTL, 0.01 drift: 100 ms + 2 ms of drift.
        assert_eq!(
            validity_us(10_000, Duration::from_millis(50), 0.01),
            (10_000 - 50 - 102) * 1000
        );
        // Elapsed past ttl - drift: no validity left.
        assert!(validity_us(100, Duration::from_millis(97), 0.01) <= 0);
        assert!(validity_us(100, Duration::from_millis(96), 0.01) > 0);
        assert!(validity_us(1, Duration::ZERO, 0.01) < 0, "1 ms is under the 2 ms floor");
        assert!(validity_us(u64::MAX, Duration::from_secs(1), 0.01) > 0);
    }

    #[test]
    fn acquire_wait_is_well_under_the_ttl() {
        let m = Duration::from_millis(200);
        assert_eq!(acquire_wait(m, Some(30_000)), m);
        assert_eq!(acquire_wait(m, Some(300)), Duration::from_millis(100));
        assert_eq!(acquire_wait(m, Some(0)), Duration::from_millis(1));
        assert_eq!(acquire_wait(m, None), m);
    }

    #[test]
    fn acquisition_tally() {
        use AcquireVote::*;
        let one = vec![vec![0, 1, 2]];
        assert_eq!(
            acquire_state(&[Granted(1), Granted(2), Pending], &one),
            AcquireState::Granted
        );
        assert_eq!(acquire_state(&[Granted(1), Pending, Pending], &one), AcquireState::Open);
        assert_eq!(acquire_state(&[Granted(1), Held, Held], &one), AcquireState::Denied);
        assert_eq!(acquire_state(&[Granted(1), Held, Failed], &one), AcquireState::Denied);
        assert_eq!(
            acquire_state(&[Failed, Failed, Granted(3)], &one),
            AcquireState::NoQuorum
        );
        assert_eq!(acquire_state(&[Failed, Pending, Pending], &one), AcquireState::Open);
        // Joint groups {0,1,2} and {2,3,4}: a majority of the first is not enough.
        let joint = vec![vec![0, 1, 2], vec![2, 3, 4]];
        assert_eq!(
            acquire_state(&[Granted(1), Granted(1), Held, Pending, Pending], &joint),
            AcquireState::Open
        );
        assert_eq!(
            acquire_state(&[Granted(1), Granted(1), Held, Held, Granted(0)], &joint),
            AcquireState::Denied
        );
        assert_eq!(
            acquire_state(&[Granted(1), Granted(1), Granted(0), Granted(0), Pending], &joint),
            AcquireState::Granted
        );
    }

    #[test]
    fn votes_from_replies() {
        assert_eq!(acquire_vote(ok(b":7\r\n").as_ref()), AcquireVote::Granted(7));
        assert_eq!(acquire_vote(ok(b":-1\r\n").as_ref()), AcquireVote::Held);
        assert_eq!(acquire_vote(ok(b"-ERR oom\r\n").as_ref()), AcquireVote::Failed);
        assert_eq!(acquire_vote(err().as_ref()), AcquireVote::Failed);
        assert_eq!(acquire_vote(None), AcquireVote::Pending);
    }

    #[test]
    fn majority_reply() {
        let g = vec![vec![0, 1, 2]];
        assert_eq!(
            agreed(&[ok(b"$1\r\na\r\n"), ok(b"$-1\r\n"), ok(b"$1\r\na\r\n")], &g).as_deref(),
            Some(&b"$1\r\na\r\n"[..])
        );
        assert_eq!(agreed(&[ok(b":1\r\n"), ok(b":0\r\n"), err()], &g), None);
        assert!(reachable(&[ok(b":1\r\n"), ok(b":0\r\n"), err()], &g));
        assert!(!reachable(&[ok(b":1\r\n"), None, err()], &g));
        // During a group change: the old group (second) holds what the new one lacks.
        let joint = vec![vec![0, 1, 2], vec![2, 3, 4]];
        let r = [
            ok(b":0\r\n"),
            ok(b":0\r\n"),
            ok(b":1\r\n"),
            ok(b":1\r\n"),
            ok(b":1\r\n"),
        ];
        assert_eq!(agreed(&r, &joint).as_deref(), Some(&b":1\r\n"[..]));
        let r = [
            ok(b"$-1\r\n"),
            ok(b"$-1\r\n"),
            ok(b"$1\r\nt\r\n"),
            ok(b"$1\r\nt\r\n"),
            None,
        ];
        assert_eq!(agreed(&r, &joint).as_deref(), Some(&b"$1\r\nt\r\n"[..]));
        let r = [
            ok(b":1\r\n"),
            ok(b":1\r\n"),
            ok(b":0\r\n"),
            ok(b":5\r\n"),
            ok(b":6\r\n"),
        ];
        assert_eq!(agreed(&r, &joint), None, "no majority in the second group");
        let r = [
            ok(b":900\r\n"),
            ok(b":-2\r\n"),
            ok(b":-2\r\n"),
            ok(b":900\r\n"),
            ok(b":800\r\n"),
        ];
        assert_eq!(
            majority_ttl(&r, &joint),
            Some(800),
            "held by the old group for 800 ms more"
        );
    }

    #[test]
    fn ttl_by_majority() {
        let g = vec![vec![0, 1, 2]];
        assert_eq!(
            majority_ttl(&[ok(b":900\r\n"), ok(b":1000\r\n"), ok(b":-2\r\n")], &g),
            Some(900)
        );
        assert_eq!(
            majority_ttl(&[ok(b":900\r\n"), ok(b":-2\r\n"), ok(b":-2\r\n")], &g),
            Some(-2)
        );
        assert_eq!(
            majority_ttl(&[ok(b":-1\r\n"), ok(b":-1\r\n"), ok(b":5\r\n")], &g),
            Some(-1)
        );
        assert_eq!(majority_ttl(&[ok(b":-1\r\n"), err(), None], &g), None);
    }
}
