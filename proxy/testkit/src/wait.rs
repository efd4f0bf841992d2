//! Waiting for a condition with a deadline instead of sleeping a fixed time: the one
//! polling loop tests use (for reloads, refreshes, connections, counters).

use std::future::Future;
use std::time::Duration;

/// How often [`eventually`] looks.
const POLL: Duration = Duration::from_millis(20);

/// The one polling loop: `check` until it returns `Some`, at most for `within`; `None`
/// when the deadline passes first.
async fn poll<T, F, Fut>(within: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Polls `check` until it returns `Some`, at most for `within`; panics naming `what` when
/// the deadline passes.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    poll(within, check)
        .await
        .unwrap_or_else(|| panic!("{what}: not within {within:?}"))
}

/// [`eventually`] for a condition that is true or not.
pub async fn until<F, Fut>(what: &str, within: Duration, check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    assert!(
        self::within(within, check).await,
        "{what}: not within {within:?}"
    );
}

/// Whether `check` turns true within `limit` (polled; no panic): for a test that goes on
/// either way.
pub async fn within<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    poll(limit, || {
        let f = check();
        async move { f.await.then_some(()) }
    })
    .await
    .is_some()
}

/// [`within`] for tests on threads of their own (network namespaces, child processes):
/// the same loop, on a thread with a runtime of its own (so it may be called from inside
/// a runtime too).
pub fn within_blocking(limit: Duration, mut check: impl FnMut() -> bool + Send) -> bool {
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("runtime")
                .block_on(within(limit, || std::future::ready(check())))
        })
        .join()
        .expect("no panic")
    })
}

/// [`until`] for tests on threads of their own.
pub fn until_blocking(what: &str, limit: Duration, check: impl FnMut() -> bool + Send) {
    assert!(
        within_blocking(limit, check),
        "{what}: not within {limit:?}"
    );
}
