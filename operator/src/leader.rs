//! Leader election on a `coordination.k8s.io/v1` Lease, so that two replicas can run and only
//! one writes.
//!
//! The lease itself is kept by `kube-lease-manager` (server-side apply on the Lease, renewal
//! before expiry, takeover of an expired lease). This module holds the small policy around it:
//! wait to lead, then run until the lease is lost, at which point the process exits and is
//! restarted as a standby (simplest way to be sure no write from the old term is in flight).

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Name of the Lease, in the operator pod's namespace.
pub const LEASE_NAME: &str = "dot-proxy-operator";
/// A leader that has not renewed for this long loses the lease.
pub const LEASE_SECONDS: u64 = 15;
/// The leader renews this long before expiry (also the clock skew tolerated between nodes).
pub const GRACE_SECONDS: u64 = 5;

/// A running lease manager: `leading` follows whether this replica holds the lease.
pub struct Lease {
    pub leading: watch::Receiver<bool>,
    task: JoinHandle<Result<kube_lease_manager::LeaseManager, LeaseManagerError>>,
}

impl Lease {
    /// Starts competing for the lease `LEASE_NAME` in `namespace` as `identity`.
    pub async fn start(
        client: Client,
        namespace: &str,
        identity: &str,
    ) -> Result<Lease, LeaseManagerError> {
        let manager = LeaseManagerBuilder::new(client, LEASE_NAME)
            .with_namespace(namespace)
            .with_identity(identity)
            .with_duration(LEASE_SECONDS)
            .with_grace(GRACE_SECONDS)
            .with_field_manager(format!("{}-lease", crate::FIELD_MANAGER))
            .build()
            .await?;
        let (leading, task) = manager.watch().await;
        Ok(Lease { leading, task })
    }

    /// Gives the lease up (if held) so a standby takes over at once instead of after expiry.
    pub async fn release(self) {
        drop(self.leading);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

/// Returns true once `leading` says this replica leads; false if the channel closed first.
pub async fn until_leading(leading: &mut watch::Receiver<bool>) -> bool {
    loop {
        if *leading.borrow_and_update() {
            return true;
        }
        if leading.changed().await.is_err() {
            return false;
        }
    }
}

/// Returns once this replica no longer leads (or the lease manager stopped).
pub async fn until_lost(leading: &mut watch::Receiver<bool>) {
    loop {
        if !*leading.borrow_and_update() {
            return;
        }
        if leading.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_to_lead_then_notices_the_loss() {
        let (tx, mut rx) = watch::channel(false);
        let waiter = tokio::spawn(async move {
            let led = until_leading(&mut rx).await;
            (led, rx)
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            !waiter.is_finished(),
            "must not lead before the lease is held"
        );
        tx.send_replace(true);
        let (led, mut rx) = waiter.await.expect("no panic");
        assert!(led);

        let loser = tokio::spawn(async move { until_lost(&mut rx).await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!loser.is_finished());
        tx.send_replace(true);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!loser.is_finished(), "a renewal is not a loss");
        tx.send_replace(false);
        loser.await.expect("no panic");
    }

    #[tokio::test]
    async fn a_stopped_manager_counts_as_not_leading() {
        let (tx, mut rx) = watch::channel(false);
        drop(tx);
        assert!(!until_leading(&mut rx).await);
        let (tx, mut rx) = watch::channel(true);
        drop(tx);
        until_lost(&mut rx).await;
    }
}
