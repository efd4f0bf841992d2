//! Identical misses in flight, coalesced: the first asks upstream, the others wait for its
//! outcome (one upstream query however many clients ask the same uncached name at once).

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus_client::metrics::counter::Counter;
use tokio::sync::oneshot;

/// The followers of one miss.
type Waiters<T> = Vec<oneshot::Sender<T>>;

/// Misses in flight by cache key, each with the receivers waiting for its outcome.
pub struct Coalescer<T> {
    waiting: Mutex<HashMap<Box<[u8]>, Waiters<T>>>,
    /// Followers, counted.
    followers: Counter,
}

impl<T> Default for Coalescer<T> {
    fn default() -> Self {
        Coalescer::counted(Counter::default())
    }
}

impl<T> Coalescer<T> {
    /// A coalescer that counts its followers on `followers`.
    pub fn counted(followers: Counter) -> Self {
        Coalescer {
            waiting: Mutex::new(HashMap::new()),
            followers,
        }
    }
}

/// What a caller of [`Coalescer::join`] does.
pub enum Role<'a, T: Clone> {
    /// Ask upstream, then [`Turn::finish`] with the outcome.
    Leader(Turn<'a, T>),
    /// Wait: the leader's outcome arrives here.
    Follower(oneshot::Receiver<T>),
}

/// A leader's turn. Dropped unfinished (its task cancelled), it hands the followers the
/// `cancelled` outcome, so they never hang.
pub struct Turn<'a, T: Clone> {
    co: &'a Coalescer<T>,
    key: &'a [u8],
    cancelled: Option<T>,
}

impl<T: Clone> Coalescer<T> {
    /// Joins the miss for `key`: the first caller leads, later ones follow until it finishes.
    pub fn join<'a>(&'a self, key: &'a [u8], cancelled: T) -> Role<'a, T> {
        let mut m = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = m.get_mut(key) {
            let (tx, rx) = oneshot::channel();
            v.push(tx);
            self.followers.inc();
            Role::Follower(rx)
        } else {
            m.insert(key.into(), Vec::new());
            Role::Leader(Turn {
                co: self,
                key,
                cancelled: Some(cancelled),
            })
        }
    }

    fn finish(&self, key: &[u8], outcome: &T) {
        let waiters = self
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        for w in waiters.into_iter().flatten() {
            let _ = w.send(outcome.clone());
        }
    }
}

impl<T: Clone> Turn<'_, T> {
    /// Hands `outcome` to every follower and ends the miss.
    pub fn finish(mut self, outcome: &T) {
        self.cancelled = None;
        self.co.finish(self.key, outcome);
    }
}

impl<T: Clone> Drop for Turn<'_, T> {
    fn drop(&mut self) {
        if let Some(c) = self.cancelled.take() {
            self.co.finish(self.key, &c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn followers_get_the_leaders_outcome_and_the_key_is_free_again() {
        let co: Coalescer<u32> = Coalescer::default();
        let Role::Leader(turn) = co.join(b"k", 0) else {
            panic!("first caller leads");
        };
        let Role::Follower(a) = co.join(b"k", 0) else {
            panic!("second follows");
        };
        let Role::Follower(b) = co.join(b"k", 0) else {
            panic!("third follows");
        };
        // Another key is another miss.
        assert!(matches!(co.join(b"other", 0), Role::Leader(_)));
        turn.finish(&7);
        assert_eq!((a.await, b.await), (Ok(7), Ok(7)));
        assert!(matches!(co.join(b"k", 0), Role::Leader(_)), "free again");
    }

    #[tokio::test]
    async fn a_cancelled_leader_hands_over_its_cancel_outcome() {
        let co: Coalescer<u32> = Coalescer::default();
        let turn = co.join(b"k", 99);
        let Role::Follower(rx) = co.join(b"k", 0) else {
            panic!("follows");
        };
        drop(turn);
        assert_eq!(rx.await, Ok(99));
    }
}
