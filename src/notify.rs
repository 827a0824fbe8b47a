//! Waiting on a [`tokio::sync::Notify`] for a condition without missing the
//! wake-up that makes it true: the waiter is armed before the condition is
//! tested, so a `notify_waiters` between the test and the wait still wakes
//! it. The shutdown signal, a session's drain wait and an inbox's close use
//! it; a leaf, used by modules listed before and after it in `lib.rs`.

use tokio::sync::Notify;

/// Resolves at the next notification of `notify`, or at once if `done()`
/// holds once the wake-up is armed; whether `done()` held.
pub async fn next_or(notify: &Notify, done: impl Fn() -> bool) -> bool {
    let notified = notify.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    if done() {
        return true;
    }
    notified.await;
    false
}

/// Resolves once `done()` holds, tested again after every notification.
pub async fn until(notify: &Notify, done: impl Fn() -> bool) {
    while !next_or(notify, &done).await {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn until_resolves_only_once_the_condition_holds() {
        let notify = Arc::new(Notify::new());
        let flag = Arc::new(AtomicBool::new(false));
        let (n, f) = (notify.clone(), flag.clone());
        let waiter = tokio::spawn(async move { until(&n, || f.load(Ordering::Acquire)).await });
        // A notification while the condition is false does not end the wait.
        tokio::time::sleep(Duration::from_millis(10)).await;
        notify.notify_waiters();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiter.is_finished());
        flag.store(true, Ordering::Release);
        notify.notify_waiters();
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("resolved")
            .expect("task");
        // Already true: at once, with no notification.
        until(&notify, || true).await;
    }

    #[tokio::test]
    async fn next_or_ends_at_the_next_notification() {
        let notify = Arc::new(Notify::new());
        let n = notify.clone();
        let waiter = tokio::spawn(async move { next_or(&n, || false).await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        notify.notify_waiters();
        let held = tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("resolved")
            .expect("task");
        assert!(!held);
        assert!(next_or(&notify, || true).await);
    }
}
