//! Waiting for a condition with a deadline instead of sleeping a fixed time: the one
//! polling loop tests use (for reloads, refreshes, connections, counters).

use std::future::Future;
use std::time::Duration;

/// How often [`eventually`] looks.
const POLL: Duration = Duration::from_millis(20);

/// Polls `check` until it returns `Some`, at most for `within`; panics naming `what` when
/// the deadline passes.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// [`eventually`] for a condition that is true or not.
pub async fn until<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually(what, within, || {
        let f = check();
        async move { f.await.then_some(()) }
    })
    .await
}

/// Whether `check` turns true within `limit` (polled; no panic): for a test that goes on
/// either way.
pub async fn within<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// [`within`] for tests on threads of their own (network namespaces, child processes).
pub fn within_blocking(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// [`until`] for tests on threads of their own.
pub fn until_blocking(what: &str, limit: Duration, check: impl FnMut() -> bool) {
    assert!(
        within_blocking(limit, check),
        "{what}: not within {limit:?}"
    );
}
