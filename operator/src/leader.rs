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

/// Name of the Lease of an operator started without a release, in the operator pod's
/// namespace.
pub const LEASE_NAME: &str = "dot-proxy-operator";

/// Name of the Lease `release`'s replicas compete for: `dot-proxy-operator-<release>`, so
/// each release in a namespace elects its own leader (without a release: [`LEASE_NAME`]).
pub fn lease_name(release: Option<&str>) -> String {
    match release {
        Some(r) => format!("{LEASE_NAME}-{r}"),
        None => LEASE_NAME.to_string(),
    }
}
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
    /// Starts competing for the lease `name` in `namespace` as `identity`.
    pub async fn start(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
    ) -> Result<Lease, LeaseManagerError> {
        Self::start_with(
            client,
            namespace,
            name,
            identity,
            LEASE_SECONDS,
            GRACE_SECONDS,
        )
        .await
    }

    /// [`Lease::start`] with another lease duration and renewal grace, in seconds (tests
    /// use short ones: the lease manager keeps time by the wall clock).
    pub async fn start_with(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: u64,
        grace: u64,
    ) -> Result<Lease, LeaseManagerError> {
        let manager = LeaseManagerBuilder::new(client, name)
            .with_namespace(namespace)
            .with_identity(identity)
            .with_duration(duration)
            .with_grace(grace)
            .with_field_manager(format!("{}-lease", crate::FIELD_MANAGER))
            .build()
            .await?;
        let (leading, task) = manager.watch().await;
        Ok(Lease { leading, task })
    }

    /// Gives the lease up (if held): the Lease's holder is cleared at once, so a standby
    /// takes it when it next looks (by the old term's expiry at the latest) without first
    /// having to break an expired lock.
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

    use std::sync::{Arc, Mutex};

    use http::{Method, Request, Response, StatusCode};
    use kube::client::Body;
    use serde_json::{json, Value};

    const NS: &str = "dot-proxy";
    const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/dot-proxy/leases";

    /// The API server's Lease endpoints, as far as the lease manager uses them: GET,
    /// POST (create), and PATCH (server-side apply and strategic merge: the patch's `spec`
    /// fields are merged, `null` removes one). One store, shared by every client made from
    /// it, so several replicas compete for one Lease.
    #[derive(Clone, Default)]
    struct FakeLeases {
        /// Lease name -> the Lease.
        leases: Arc<Mutex<std::collections::BTreeMap<String, Value>>>,
        version: Arc<Mutex<u64>>,
    }

    impl FakeLeases {
        fn client(&self) -> Client {
            let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
            let me = self.clone();
            tokio::spawn(async move {
                while let Some((req, respond)) = handle.next_request().await {
                    let resp = me.answer(req).await;
                    respond.send_response(resp);
                }
            });
            Client::new(service, "default")
        }

        fn spec(&self) -> Value {
            self.spec_of(LEASE_NAME)
        }

        fn spec_of(&self, name: &str) -> Value {
            self.leases
                .lock()
                .expect("lock")
                .get(name)
                .map_or(Value::Null, |l| l["spec"].clone())
        }

        fn holder(&self) -> Option<String> {
            self.holder_of(LEASE_NAME)
        }

        fn holder_of(&self, name: &str) -> Option<String> {
            self.spec_of(name)["holderIdentity"]
                .as_str()
                .map(str::to_string)
        }

        async fn answer(&self, req: Request<Body>) -> Response<Body> {
            let method = req.method().clone();
            let path = req.uri().path().to_string();
            let bytes = req.into_body().collect_bytes().await.expect("body");
            let body: Value = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).expect("JSON body")
            };
            let name = path.strip_prefix(&format!("{LEASES}/")).map(str::to_string);
            let named = name.is_some();
            let mut leases = self.leases.lock().expect("lock");
            let key = name
                .clone()
                .or_else(|| body["metadata"]["name"].as_str().map(str::to_string))
                .unwrap_or_default();
            let mut lease = leases.remove(&key);
            let mut version = self.version.lock().expect("lock");
            let status = |code: u16, reason: &str| json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code});
            let (code, reply) = match (method, named) {
                (Method::GET, true) => match lease.as_ref() {
                    Some(l) => (StatusCode::OK, l.clone()),
                    None => (StatusCode::NOT_FOUND, status(404, "NotFound")),
                },
                (Method::POST, false) if path == LEASES => {
                    if lease.is_some() {
                        (StatusCode::CONFLICT, status(409, "AlreadyExists"))
                    } else {
                        *version += 1;
                        let mut l = body.clone();
                        l["metadata"]["namespace"] = json!(NS);
                        l["metadata"]["resourceVersion"] = json!(version.to_string());
                        lease = Some(l.clone());
                        (StatusCode::CREATED, l)
                    }
                }
                (Method::PATCH, true) => {
                    *version += 1;
                    let l = lease.get_or_insert_with(|| {
                        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                               "metadata": {"name": key, "namespace": NS}, "spec": {}})
                    });
                    if !l["spec"].is_object() {
                        l["spec"] = json!({});
                    }
                    if let (Some(patch), Some(spec)) =
                        (body["spec"].as_object(), l["spec"].as_object_mut())
                    {
                        for (k, v) in patch {
                            if v.is_null() {
                                spec.remove(k);
                            } else {
                                spec.insert(k.clone(), v.clone());
                            }
                        }
                    }
                    l["metadata"]["resourceVersion"] = json!(version.to_string());
                    (StatusCode::OK, l.clone())
                }
                _ => (StatusCode::NOT_FOUND, status(404, "NotFound")),
            };
            if let Some(l) = lease {
                leases.insert(key, l);
            }
            Response::builder()
                .status(code)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&reply).expect("json")))
                .expect("response")
        }
    }

    async fn start(api: &FakeLeases, identity: &str) -> Lease {
        start_named(api, LEASE_NAME, identity).await
    }

    async fn start_named(api: &FakeLeases, name: &str, identity: &str) -> Lease {
        Lease::start_with(api.client(), NS, name, identity, 2, 1)
            .await
            .expect("lease manager starts")
    }

    async fn leads_within(lease: &mut Lease, limit: Duration) -> bool {
        tokio::time::timeout(limit, until_leading(&mut lease.leading))
            .await
            .unwrap_or(false)
    }

    #[tokio::test(start_paused = true)]
    async fn creates_the_lease_leads_and_renews_it() {
        let api = FakeLeases::default();
        let mut a = start(&api, "replica-a").await;
        assert!(leads_within(&mut a, Duration::from_secs(5)).await);
        assert_eq!(api.holder().as_deref(), Some("replica-a"));
        assert_eq!(api.spec()["leaseDurationSeconds"], json!(2));
        let renewed = api.spec()["renewTime"].clone();
        // Renewed a grace second before each expiry: still the leader, with a newer renewTime.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(*a.leading.borrow());
        assert_ne!(api.spec()["renewTime"], renewed, "renewed");
        assert_eq!(api.holder().as_deref(), Some("replica-a"));
        a.release().await;
    }

    #[tokio::test]
    async fn a_standby_takes_over_after_the_leader_dies_without_stepping_down() {
        let api = FakeLeases::default();
        let mut a = start(&api, "replica-a").await;
        assert!(leads_within(&mut a, Duration::from_secs(5)).await);
        let mut b = start(&api, "replica-b").await;
        assert!(
            !leads_within(&mut b, Duration::from_millis(2500)).await,
            "a standby does not lead while the leader renews"
        );
        // The leader's process dies: no renewal, no release.
        a.task.abort();
        drop(a.leading);
        assert!(
            leads_within(&mut b, Duration::from_secs(6)).await,
            "taken over after expiry"
        );
        assert_eq!(api.holder().as_deref(), Some("replica-b"));
        assert!(api.spec()["leaseTransitions"].as_i64().unwrap_or(0) >= 1);
        b.release().await;
    }

    #[tokio::test]
    async fn stepping_down_clears_the_holder_and_the_standby_takes_over() {
        let api = FakeLeases::default();
        let mut a = start(&api, "replica-a").await;
        assert!(leads_within(&mut a, Duration::from_secs(5)).await);
        let mut b = start(&api, "replica-b").await;
        a.release().await;
        assert_eq!(
            api.holder(),
            None,
            "the holder is cleared at once on shutdown"
        );
        assert!(
            leads_within(&mut b, Duration::from_secs(4)).await,
            "the standby takes the free lease"
        );
        assert_eq!(api.holder().as_deref(), Some("replica-b"));
        b.release().await;
        assert_eq!(api.holder(), None);
    }

    /// Issue 32: two releases in one namespace each hold their own Lease, and both lead at
    /// once (before, both competed for `dot-proxy-operator`: one release had no leader).
    #[tokio::test]
    async fn two_releases_in_one_namespace_each_lead_their_own_lease() {
        let api = FakeLeases::default();
        let (a_name, b_name) = (lease_name(Some("pool-a")), lease_name(Some("pool-b")));
        assert_eq!(
            (a_name.as_str(), b_name.as_str(), lease_name(None).as_str()),
            (
                "dot-proxy-operator-pool-a",
                "dot-proxy-operator-pool-b",
                "dot-proxy-operator"
            )
        );
        let mut a = start_named(&api, &a_name, "pool-a-replica-1").await;
        let mut a2 = start_named(&api, &a_name, "pool-a-replica-2").await;
        let mut b = start_named(&api, &b_name, "pool-b-replica-1").await;
        assert!(leads_within(&mut a, Duration::from_secs(5)).await);
        assert!(
            leads_within(&mut b, Duration::from_secs(5)).await,
            "the other release leads too"
        );
        assert!(
            !leads_within(&mut a2, Duration::from_millis(2500)).await,
            "one leader per release"
        );
        assert_eq!(api.holder_of(&a_name).as_deref(), Some("pool-a-replica-1"));
        assert_eq!(api.holder_of(&b_name).as_deref(), Some("pool-b-replica-1"));
        assert_eq!(api.holder(), None, "the release-less Lease is not used");
        a.release().await;
        a2.release().await;
        b.release().await;
    }

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
