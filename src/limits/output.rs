//! Output buffer limits, as Redis's `client-output-buffer-limit`: per class
//! of client (`normal`, `pubsub`) a hard limit in bytes, and a soft limit in
//! bytes with a number of seconds. A client whose replies waiting to be
//! written (in the proxy) pass the hard limit, or stay over the soft limit
//! for longer than its seconds, is closed. 0 turns a limit off.
//!
//! The live values are relaxed atomics in [`OutputLimits`]: set from
//! `[limits]` at start-up and on a reload (a value the file changes), and
//! by `CONFIG SET client-output-buffer-limit`. A session reads them only
//! when it has bytes waiting (see `crate::session`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A client class with its own limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Normal,
    Pubsub,
}

impl Class {
    pub fn name(self) -> &'static str {
        match self {
            Class::Normal => "normal",
            Class::Pubsub => "pubsub",
        }
    }
}

/// One class's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutputLimit {
    /// Bytes; 0: no hard limit.
    pub hard: u64,
    /// Bytes; 0: no soft limit.
    pub soft: u64,
    /// How long a client may stay over the soft limit.
    pub soft_secs: u64,
}

/// Why a client is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breach {
    Hard,
    Soft,
}

impl OutputLimit {
    /// Parses `"<hard> <soft> <seconds>"` as Redis does (`256mb 64mb 60`,
    /// `0 0 0`; units b, k, kb, m, mb, g, gb, any case).
    pub fn parse(s: &str) -> Result<OutputLimit, String> {
        let parts: Vec<&str> = s.split_whitespace().collect();
        let [hard, soft, secs] = parts[..] else {
            return Err(format!(
                "'{s}': expected '<hard> <soft> <seconds>', e.g. '256mb 64mb 60'"
            ));
        };
        Ok(OutputLimit {
            hard: memtoull(hard).ok_or_else(|| format!("'{hard}': not a size"))?,
            soft: memtoull(soft).ok_or_else(|| format!("'{soft}': not a size"))?,
            soft_secs: secs.parse().map_err(|_| format!("'{secs}': not a number of seconds"))?,
        })
    }

    /// Whether a client with `held` bytes waiting, over the soft limit
    /// since `over_soft` (if it was), must be closed now; also updates
    /// `over_soft` (set when it first goes over, cleared when under).
    pub fn check(&self, held: u64, over_soft: &mut Option<Instant>, now: impl FnOnce() -> Instant) -> Option<Breach> {
        if self.hard > 0 && held >= self.hard {
            return Some(Breach::Hard);
        }
        if self.soft == 0 || held < self.soft {
            *over_soft = None;
            return None;
        }
        let now = now();
        let since = *over_soft.get_or_insert(now);
        (now.saturating_duration_since(since) >= Duration::from_secs(self.soft_secs)).then_some(Breach::Soft)
    }

    /// When a client over the soft limit since `since` is due to be closed.
    pub fn soft_deadline(&self, since: Instant) -> Instant {
        since + Duration::from_secs(self.soft_secs)
    }
}

impl std::fmt::Display for OutputLimit {
    /// As CONFIG GET shows a class: bytes, `<hard> <soft> <seconds>`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.hard, self.soft, self.soft_secs)
    }
}

/// Redis's `memtoull`: a number with an optional unit (k = 1000,
/// kb = 1024, ...).
pub fn memtoull(s: &str) -> Option<u64> {
    let lower = s.to_ascii_lowercase();
    let digits = lower.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let mul: u64 = match &lower[digits.len()..] {
        "" | "b" => 1,
        "k" => 1000,
        "kb" => 1024,
        "m" => 1000 * 1000,
        "mb" => 1024 * 1024,
        "g" => 1000 * 1000 * 1000,
        "gb" => 1024 * 1024 * 1024,
        _ => return None,
    };
    digits.parse::<u64>().ok()?.checked_mul(mul)
}

/// The live limits of both classes.
#[derive(Debug, Default)]
pub struct OutputLimits {
    /// hard, soft, seconds; normal then pubsub.
    v: [[AtomicU64; 3]; 2],
}

impl OutputLimits {
    fn slot(class: Class) -> usize {
        match class {
            Class::Normal => 0,
            Class::Pubsub => 1,
        }
    }

    /// The class's limits now (three relaxed loads).
    #[inline]
    pub fn get(&self, class: Class) -> OutputLimit {
        let v = &self.v[Self::slot(class)];
        OutputLimit {
            hard: v[0].load(Ordering::Relaxed),
            soft: v[1].load(Ordering::Relaxed),
            soft_secs: v[2].load(Ordering::Relaxed),
        }
    }

    pub fn set(&self, class: Class, l: OutputLimit) {
        let v = &self.v[Self::slot(class)];
        v[0].store(l.hard, Ordering::Relaxed);
        v[1].store(l.soft, Ordering::Relaxed);
        v[2].store(l.soft_secs, Ordering::Relaxed);
    }

    /// CONFIG GET's value: `normal <h> <s> <secs> replica 0 0 0 pubsub ...`
    /// (replica as the shards have it: the proxy has no replicas).
    pub fn config_value(&self) -> String {
        format!(
            "normal {} replica 0 0 0 pubsub {}",
            self.get(Class::Normal),
            self.get(Class::Pubsub)
        )
    }

    /// CONFIG SET client-output-buffer-limit's value: `<class> <hard>
    /// <soft> <secs>` repeated (`replica` / `slave` accepted and ignored).
    /// All or nothing: nothing is set unless every class parses.
    pub fn config_set(&self, value: &str) -> Result<(), String> {
        let words: Vec<&str> = value.split_whitespace().collect();
        if words.is_empty() || words.len() % 4 != 0 {
            return Err("Wrong number of arguments in buffer limit configuration.".into());
        }
        let mut set = Vec::new();
        for w in words.chunks(4) {
            let class = match w[0].to_ascii_lowercase().as_str() {
                "normal" => Some(Class::Normal),
                "pubsub" => Some(Class::Pubsub),
                "replica" | "slave" => None,
                _ => return Err("Invalid client class specified in buffer limit configuration.".into()),
            };
            let l = OutputLimit::parse(&w[1..].join(" ")).map_err(|_| {
                "Error in hard, soft or soft_seconds setting in buffer limit configuration.".to_string()
            })?;
            if let Some(c) = class {
                set.push((c, l));
            }
        }
        for (c, l) in set {
            self.set(c, l);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_as_redis() {
        assert_eq!(
            OutputLimit::parse("256mb 64mb 60"),
            Ok(OutputLimit {
                hard: 256 << 20,
                soft: 64 << 20,
                soft_secs: 60
            })
        );
        assert_eq!(OutputLimit::parse("0 0 0"), Ok(OutputLimit::default()));
        assert_eq!(
            OutputLimit::parse("1K 2kb 3").map(|l| (l.hard, l.soft)),
            Ok((1000, 2048))
        );
        assert_eq!(
            OutputLimit::parse("1gb 1g 0").map(|l| (l.hard, l.soft)),
            Ok((1 << 30, 1_000_000_000))
        );
        assert!(OutputLimit::parse("1mb 1mb").is_err());
        assert!(OutputLimit::parse("1xb 0 0").is_err());
        assert!(OutputLimit::parse("-1 0 0").is_err());
        assert!(OutputLimit::parse("1 0 x").is_err());
    }

    #[test]
    fn hard_closes_at_once_soft_after_its_seconds() {
        let l = OutputLimit {
            hard: 100,
            soft: 10,
            soft_secs: 5,
        };
        let t0 = Instant::now();
        let mut over = None;
        assert_eq!(l.check(9, &mut over, || t0), None);
        assert_eq!(over, None);
        assert_eq!(l.check(10, &mut over, || t0), None);
        assert_eq!(over, Some(t0));
        assert_eq!(l.check(50, &mut over, || t0 + Duration::from_secs(4)), None);
        assert_eq!(
            l.check(50, &mut over, || t0 + Duration::from_secs(5)),
            Some(Breach::Soft)
        );
        // Going under resets the clock.
        assert_eq!(l.check(1, &mut over, || t0 + Duration::from_secs(6)), None);
        assert_eq!(over, None);
        assert_eq!(l.check(100, &mut over, || t0), Some(Breach::Hard));
        let off = OutputLimit::default();
        assert_eq!(off.check(u64::MAX, &mut over, || t0), None);
    }

    #[test]
    fn config_set_is_all_or_nothing() {
        let o = OutputLimits::default();
        assert!(o.config_set("normal 1mb 512kb 10 pubsub 32mb 8mb 60").is_ok());
        assert_eq!(o.get(Class::Normal).hard, 1 << 20);
        assert_eq!(o.get(Class::Pubsub).soft_secs, 60);
        assert_eq!(
            o.config_value(),
            "normal 1048576 524288 10 replica 0 0 0 pubsub 33554432 8388608 60"
        );
        assert!(o.config_set("normal 0 0 0 pubsub x 0 0").is_err());
        assert_eq!(o.get(Class::Normal).hard, 1 << 20, "nothing set");
        assert!(o.config_set("bogus 0 0 0").is_err());
        assert!(o.config_set("normal 0 0").is_err());
        assert!(o.config_set("replica 1 1 1 normal 0 0 0").is_ok());
        assert_eq!(o.get(Class::Normal), OutputLimit::default());
    }
}
