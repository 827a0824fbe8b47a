//! The migrator's pacing: how many keys one `MIGRATE` carries.
//!
//! `MIGRATE` is synchronous on the source Redis: it serializes every key of
//! the batch, sends them to the target, waits for the target's answers and
//! only then serves its other clients. A big batch amortizes the round trips
//! (the proxy's and the source's to the target) over many keys, but blocks the
//! source's clients for its whole duration. [`Pacer`] picks the batch size
//! from the latency the last batches had: the largest batch that still takes
//! about [`Pacer::target`] (a few milliseconds), between a floor and a cap.
//! [`RateLimit`]: the pause after a batch that keeps a walk under
//! `[migration] max_keys_per_second`. Pure logic; [`super::mover`] measures
//! and feeds them.

use std::time::Duration;

/// Latency one migrator `MIGRATE` aims at. Foreground requests on the source
/// shard wait behind it at worst this long (plus one `SCAN`).
pub const TARGET: Duration = Duration::from_millis(3);
/// Keys of the first batch, before any latency has been measured.
pub const FIRST_BATCH: usize = 128;
/// Fewest keys a batch carries, however slow the shard.
pub const MIN_BATCH: usize = 8;
/// Most keys a batch carries, however fast the shard.
pub const MAX_BATCH: usize = 2048;

/// Adaptive batch size: grows (at most doubling) while batches finish well
/// within the target latency, shrinks at once (to what would have fit) when
/// one overran it.
#[derive(Debug, Clone)]
pub struct Pacer {
    batch: usize,
    min: usize,
    max: usize,
    target: Duration,
}

impl Default for Pacer {
    fn default() -> Self {
        Pacer::new(TARGET, FIRST_BATCH, MIN_BATCH, MAX_BATCH)
    }
}

impl Pacer {
    pub fn new(target: Duration, first: usize, min: usize, max: usize) -> Pacer {
        let min = min.max(1);
        let max = max.max(min);
        Pacer {
            batch: first.clamp(min, max),
            min,
            max,
            target: target.max(Duration::from_micros(1)),
        }
    }

    /// Keys the next batch should carry.
    pub fn batch(&self) -> usize {
        self.batch
    }

    pub fn target(&self) -> Duration {
        self.target
    }

    /// A `MIGRATE` of `keys` keys took `took` (its service time on the
    /// source, as well as the caller can tell).
    pub fn observe(&mut self, keys: usize, took: Duration) {
        if keys == 0 {
            return;
        }
        let took = took.max(Duration::from_micros(1));
        // Keys that would have taken the target latency at this batch's
        // speed: the fixed cost of a batch makes this an underestimate,
        // which errs on the short side.
        let fits = (keys as f64 * self.target.as_secs_f64() / took.as_secs_f64()) as usize;
        if took > self.target {
            // Too slow: shrink now, to what would have fit (never below the
            // floor). A stall that was not the batch's fault costs a few
            // batches of regrowth.
            self.batch = fits.min(self.batch).max(self.min);
        } else if keys * 2 >= self.batch {
            // Fast enough, and the batch was full enough to say so (a short
            // last batch of a walk says little): grow toward what fits, at
            // most doubling, so one lucky measurement cannot jump to the cap.
            let grow = fits.min(self.batch * 2).min(self.max);
            self.batch = self.batch.max(grow);
        }
    }
}

/// A walk's speed limit: keys moved so far against the time since it began.
#[derive(Debug, Clone)]
pub struct RateLimit {
    /// Keys a second; `None` for no limit.
    per_second: Option<f64>,
    moved: u64,
}

impl RateLimit {
    /// `per_second` keys a second (0: no limit).
    pub fn new(per_second: f64) -> RateLimit {
        RateLimit {
            per_second: (per_second > 0.0).then_some(per_second),
            moved: 0,
        }
    }

    /// `keys` more moved, `elapsed` after the walk began: how long to wait
    /// before the next batch so the walk averages at most the limit.
    pub fn after(&mut self, keys: usize, elapsed: Duration) -> Duration {
        self.moved += keys as u64;
        let Some(rate) = self.per_second else {
            return Duration::ZERO;
        };
        Duration::from_secs_f64(self.moved as f64 / rate).saturating_sub(elapsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_limit_spaces_batches_to_average_the_limit() {
        let mut unlimited = RateLimit::new(0.0);
        assert_eq!(unlimited.after(10_000, ms(1)), Duration::ZERO);
        let mut r = RateLimit::new(10_000.0);
        // 500 keys are 50 ms of budget; 5 ms went by: wait 45.
        assert_eq!(r.after(500, ms(5)), ms(45));
        // Behind (a slow batch): no wait until the average is back under.
        assert_eq!(r.after(500, ms(150)), Duration::ZERO);
        assert_eq!(r.after(1000, ms(160)), ms(40));
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn grows_by_at_most_double_while_batches_are_fast() {
        let mut p = Pacer::new(ms(3), 100, 8, 1000);
        // 100 keys in 0.1 ms: 3000 would fit; doubles to 200.
        p.observe(100, Duration::from_micros(100));
        assert_eq!(p.batch(), 200);
        p.observe(200, Duration::from_micros(200));
        assert_eq!(p.batch(), 400);
        p.observe(400, Duration::from_micros(400));
        p.observe(800, Duration::from_micros(800));
        assert_eq!(p.batch(), 1000, "capped");
        p.observe(1000, Duration::from_micros(900));
        assert_eq!(p.batch(), 1000);
    }

    #[test]
    fn settles_where_a_batch_takes_about_the_target() {
        // A shard costing 10 µs per key plus 200 µs per batch: 3 ms fits 280.
        let mut p = Pacer::new(ms(3), 16, 8, 4096);
        for _ in 0..50 {
            let n = p.batch();
            p.observe(n, Duration::from_micros(200 + 10 * n as u64));
        }
        let n = p.batch();
        assert!((200..=300).contains(&n), "{n}");
        let took = 200 + 10 * n as u64;
        assert!(took <= 3000, "{took} µs");
    }

    #[test]
    fn shrinks_at_once_when_a_batch_overruns() {
        let mut p = Pacer::new(ms(3), 1000, 8, 4096);
        // 1000 keys in 30 ms: 100 would have fit.
        p.observe(1000, ms(30));
        assert_eq!(p.batch(), 100);
        // A stall (the shard busy elsewhere): never below the floor.
        p.observe(100, Duration::from_secs(2));
        assert_eq!(p.batch(), 8);
        p.observe(8, Duration::from_secs(2));
        assert_eq!(p.batch(), 8);
    }

    #[test]
    fn short_batches_do_not_make_it_grow() {
        let mut p = Pacer::new(ms(3), 512, 8, 4096);
        // The last few keys of a walk: fast, but say nothing about 1024.
        p.observe(10, Duration::from_micros(50));
        assert_eq!(p.batch(), 512);
        // But a short batch that was slow still shrinks it.
        p.observe(10, ms(6));
        assert_eq!(p.batch(), 8);
        p.observe(0, ms(100));
        assert_eq!(p.batch(), 8, "nothing measured");
    }

    #[test]
    fn bounds_are_sane() {
        let p = Pacer::new(Duration::ZERO, 0, 0, 0);
        assert_eq!(p.batch(), 1);
        assert!(p.target() > Duration::ZERO);
        let p = Pacer::default();
        assert_eq!((p.batch(), p.target()), (FIRST_BATCH, TARGET));
    }
}
