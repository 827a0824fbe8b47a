//! `max_clients` per user (`[[users]] max_clients = N`): how many
//! connections are logged in as each user. A login (AUTH, HELLO AUTH) as a
//! user takes a seat, counted by name so the count survives a reload; the
//! seat is given back when the connection closes, logs in as another user,
//! or RESETs. Every named login is counted, limited or not, so a limit a
//! reload adds sees the connections already there (it closes none of
//! them: it refuses new logins until the count is under it).
//!
//! Touched only by logins and disconnections of logged-in clients: one
//! mutex, never on the request path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Logged-in connections per user name.
#[derive(Debug, Default)]
pub struct Seats {
    map: Mutex<HashMap<String, usize>>,
}

/// One connection logged in as `user`; gives the seat back when dropped.
#[derive(Debug)]
pub struct Seat {
    limits: Arc<super::Limits>,
    user: String,
}

impl Seat {
    pub fn user(&self) -> &str {
        &self.user
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut map = self.limits.seats.lock();
        if let Some(n) = map.get_mut(&self.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.user);
            }
        }
    }
}

impl Seats {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, usize>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connections logged in as `user` now.
    pub fn count(&self, user: &str) -> usize {
        self.lock().get(user).copied().unwrap_or(0)
    }
}

impl super::Limits {
    /// A seat for a connection logging in as `user`, which may have at most
    /// `max` (`None`: no limit). `held`: the seat the connection has now,
    /// if it is logged in as someone: kept when it logs in as the same
    /// user again. `None`: the user is full.
    pub fn take_seat(
        self: &Arc<Self>,
        user: &str,
        max: Option<usize>,
        held: Option<Seat>,
    ) -> Result<Seat, Option<Seat>> {
        if let Some(h) = held {
            if h.user == user {
                return Ok(h);
            }
            let mut map = self.seats.lock();
            let n = map.entry(user.to_string()).or_insert(0);
            if max.is_some_and(|m| *n >= m) {
                if *n == 0 {
                    map.remove(user);
                }
                return Err(Some(h));
            }
            *n += 1;
            drop(map);
            drop(h);
        } else {
            let mut map = self.seats.lock();
            let n = map.entry(user.to_string()).or_insert(0);
            if max.is_some_and(|m| *n >= m) {
                if *n == 0 {
                    map.remove(user);
                }
                return Err(None);
            }
            *n += 1;
        }
        Ok(Seat {
            limits: self.clone(),
            user: user.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::Limits;
    use std::sync::Arc;

    #[test]
    fn seats_are_limited_kept_and_given_back() {
        let l = Arc::new(Limits::default());
        let a = l.take_seat("app", Some(2), None).unwrap();
        let b = l.take_seat("app", Some(2), None).unwrap();
        assert_eq!(l.seats.count("app"), 2);
        assert!(l.take_seat("app", Some(2), None).is_err());
        // Logging in again as the same user keeps the seat.
        let a = l.take_seat("app", Some(2), Some(a)).unwrap();
        assert_eq!(l.seats.count("app"), 2);
        // Refused: the connection keeps the seat it had.
        let other = l.take_seat("ops", None, None).unwrap();
        let other = match l.take_seat("app", Some(2), Some(other)) {
            Err(Some(s)) => s,
            _ => panic!("app is full"),
        };
        assert_eq!(other.user(), "ops");
        // Moving to another user gives the seat back.
        let moved = l.take_seat("ops", None, Some(a)).unwrap();
        assert_eq!(l.seats.count("app"), 1);
        assert_eq!(l.seats.count("ops"), 2);
        drop((b, moved, other));
        assert_eq!(l.seats.count("app"), 0);
        assert_eq!(l.seats.count("ops"), 0);
        assert!(l.seats.lock().is_empty());
        let _c = l.take_seat("app", Some(0), None).unwrap_err();
        assert!(l.seats.lock().is_empty());
    }
}
