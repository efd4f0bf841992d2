//! The reconciler: render, write what changed, report.
//!
//! One reconcile of a `DotProxyConfig`:
//! 0. if the operator runs for a release, leave the resource alone unless it is that
//!    release's (its label, or a claim this operator wins first; [`scope`]);
//! 1. render it with the current (debounced) view of annotated pods and nodes;
//! 2. if it is invalid: write only the status (Ready=False, Invalid=True with the message);
//!    the ConfigMaps keep the last good content;
//! 3. otherwise, once the pod view has synced: list the ConfigMaps written for it (one call),
//!    check that every ConfigMap it would write is its own or free (a GET for a name not in
//!    the list; [`ownership`]) and write nothing if one is not (Ready=False
//!    ConfigMapNotOwned), server-side apply those whose content differs (main ConfigMap
//!    first, then the shards), delete the ones it no longer produces, put a Warning Event
//!    on each pod with an ignored annotation (once per pod and message), and write the
//!    status if it changed.
//!
//! Every write uses server-side apply under the one field manager `dot-proxy-operator`. A
//! reconcile with nothing new makes one LIST and no write (the GETs happen only for names
//! the resource has not written yet).

mod objects;
mod scope;
mod status;

#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::{watch, Mutex};
use tracing::{debug, info, warn};

pub use objects::{config_map, selector, stale, up_to_date, Role};
use objects::{ownership, Ownership};
pub use scope::valid_release;
use scope::{scope, Scope};
pub use status::{desired as desired_status, Outcome};

use crate::admin::Health;
use crate::cluster::{self, Snapshot};
use crate::metrics::{Metrics, ReconcileResult, WriteKind};
use crate::render::{render, PodProblem};
use crate::resource::DotProxyConfig;
use crate::{FIELD_MANAGER, MANAGED_BY_LABEL};

pub use crate::render::{ANNOTATION_NOT_GRANTED, INVALID_ANNOTATION};
/// Periodic re-check even without any trigger (undoes drift a missed watch event hid).
const RESYNC: Duration = Duration::from_secs(300);
/// Retry delay after a failed API call, and while waiting for the pod view to sync.
const RETRY: Duration = Duration::from_secs(15);
const WAIT_FOR_SYNC: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("the resource has no namespace")]
    NoNamespace,
    #[error("cannot encode the status: {0}")]
    Encode(#[from] serde_json::Error),
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    /// The debounced view of annotated pods and nodes.
    pub cluster: watch::Receiver<Arc<Snapshot>>,
    pub metrics: Arc<Metrics>,
    recorder: Recorder,
    /// Pod uid -> Event messages already sent for it, so a pod gets each warning once.
    reported: Mutex<HashMap<String, BTreeSet<String>>>,
    /// The clock for condition times (tests use a fixed one).
    now: fn() -> Time,
    /// The release this operator acts for (`None`: every resource of its namespace).
    release: Option<String>,
}

impl Context {
    pub fn new(
        client: Client,
        cluster: watch::Receiver<Arc<Snapshot>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self::with_clock(client, cluster, metrics, now)
    }

    pub fn with_clock(
        client: Client,
        cluster: watch::Receiver<Arc<Snapshot>>,
        metrics: Arc<Metrics>,
        now: fn() -> Time,
    ) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        let recorder = Recorder::new(client.clone(), reporter);
        Context {
            client,
            cluster,
            metrics,
            recorder,
            reported: Mutex::default(),
            now,
            release: None,
        }
    }

    /// Acts only on the resources of `release` (see [`scope`]).
    pub fn for_release(mut self, release: Option<String>) -> Self {
        self.release = release;
        self
    }
}

fn now() -> Time {
    let t = k8s_openapi::jiff::Timestamp::now();
    // Whole seconds, as the API server stores them.
    Time(k8s_openapi::jiff::Timestamp::from_second(t.as_second()).unwrap_or(t))
}

/// Reconciles one resource.
pub async fn reconcile(dpc: Arc<DotProxyConfig>, ctx: Arc<Context>) -> Result<Action, Error> {
    let mut dpc = dpc;
    match scope(&dpc, ctx.release.as_deref()) {
        Scope::Ours => {}
        // Another release's: not reconciled, not counted.
        Scope::NotOurs => return Ok(Action::await_change()),
        Scope::Claim => match claim(&dpc, &ctx).await {
            Ok(claimed) => dpc = Arc::new(claimed),
            // It changed since it was read (another release's claim, or any edit); the
            // watch brings the new version, decided again then.
            Err(Error::Kube(kube::Error::Api(e))) if e.is_conflict() => {
                info!(namespace = ?dpc.namespace(), name = %dpc.name_any(), "the resource changed while claiming it (another release may have claimed it); trying again with the new version");
                return Ok(Action::requeue(WAIT_FOR_SYNC));
            }
            Err(e) => return Err(e),
        },
    }
    let started = tokio::time::Instant::now();
    let result = reconcile_inner(&dpc, &ctx).await;
    let label = match &result {
        Ok((r, _)) => *r,
        Err(_) => ReconcileResult::Error,
    };
    ctx.metrics.reconciled(label, started.elapsed());
    result.map(|(_, action)| action)
}

async fn reconcile_inner(
    dpc: &DotProxyConfig,
    ctx: &Context,
) -> Result<(ReconcileResult, Action), Error> {
    let ns = dpc.namespace().ok_or(Error::NoNamespace)?;
    let name = dpc.name_any();
    if dpc.meta().deletion_timestamp.is_some() {
        // Garbage collection removes the ConfigMaps through their owner references.
        return Ok((ReconcileResult::Applied, Action::await_change()));
    }
    if !dpc.spec.unknown_fields.is_empty() {
        warn!(namespace = %ns, name = %name, fields = ?dpc.spec.unknown_fields, "fields this operator does not know are ignored (written for a newer CRD); see status.unknownFields");
    }
    let snapshot = ctx.cluster.borrow().clone();
    let rendered = match render(
        &name,
        &dpc.spec,
        &snapshot.pods,
        &snapshot.nodes,
        &snapshot.namespaces,
    ) {
        Ok(r) => r,
        Err(invalid) => {
            info!(namespace = %ns, name = %name, reason = invalid.reason(), error = %invalid, "resource is invalid; ConfigMaps left as they were");
            write_status(dpc, ctx, &ns, Outcome::Invalid(&invalid)).await?;
            return Ok((ReconcileResult::Invalid, Action::requeue(RESYNC)));
        }
    };
    if !snapshot.synced {
        debug!(namespace = %ns, name = %name, "waiting for the pod and node watches to sync");
        return Ok((ReconcileResult::Waiting, Action::requeue(WAIT_FOR_SYNC)));
    }

    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    let existing = api
        .list(&ListParams::default().labels(&selector(dpc)))
        .await?
        .items;
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let desired = std::iter::once((
        config_map(dpc, &rendered.config, Role::Config),
        Role::Config,
    ))
    .chain(
        rendered
            .shards
            .iter()
            .map(|s| (config_map(dpc, s, Role::Overrides), Role::Overrides)),
    );
    let desired: Vec<(ConfigMap, Role)> = desired.collect();
    // Ownership first, for every name, before anything is written: a ConfigMap another
    // resource or someone else made is never overwritten, and a refusal leaves all of
    // this resource's ConfigMaps as they were.
    // Borrowed from the LIST where it has them (no copy of up to 65 large maps per
    // reconcile), owned when fetched.
    let mut found: Vec<Option<Cow<'_, ConfigMap>>> = Vec::with_capacity(desired.len());
    for (cm, _) in &desired {
        let cm_name = cm.name_any();
        let current = match existing.iter().find(|e| e.name_any() == cm_name) {
            Some(e) => Some(Cow::Borrowed(e)),
            // Not labeled as this resource's: only a GET can tell a free name from a
            // ConfigMap someone else made.
            None => match api.get_opt(&cm_name).await {
                Ok(found) => found.map(Cow::Owned),
                Err(e) => {
                    // Said in the status like a failed write (RBAC that does not name
                    // this ConfigMap, the API server), then retried.
                    let why = format!("could not read ConfigMap {cm_name}: {e}");
                    write_failed(dpc, ctx, &ns, &why).await;
                    return Err(e.into());
                }
            },
        };
        match current.as_ref().map(|c| ownership(dpc, c)) {
            Some(Ownership::NotOurs(why)) => {
                let why = format!("ConfigMap {cm_name} is not overwritten: {why}. Delete it, or set another spec.target.configMapName");
                warn!(namespace = %ns, name = %name, configmap = %cm_name, reason = %why, "refusing to write a ConfigMap this resource does not own");
                write_status(dpc, ctx, &ns, Outcome::NotOwned(&why)).await?;
                return Ok((ReconcileResult::Refused, Action::requeue(RETRY)));
            }
            Some(Ownership::Adopt) => {
                info!(namespace = %ns, name = %name, configmap = %cm_name, "adopting a ConfigMap this operator wrote without an owner reference");
            }
            Some(Ownership::Ours) | None => {}
        }
        found.push(current);
    }
    let mut names = Vec::new();
    let mut written = 0;
    for ((cm, role), current) in desired.into_iter().zip(found) {
        let cm_name = cm.name_any();
        names.push(cm_name.clone());
        if current.as_ref().is_some_and(|e| up_to_date(e, &cm)) {
            continue;
        }
        if let Err(e) = api.patch(&cm_name, &pp, &Patch::Apply(&cm)).await {
            // Said in the status (best effort: the API server may be what fails), then
            // retried by the error policy.
            let why = format!("could not write ConfigMap {cm_name}: {e}");
            write_failed(dpc, ctx, &ns, &why).await;
            return Err(e.into());
        }
        written += 1;
        ctx.metrics.wrote(match role {
            Role::Config => WriteKind::Config,
            Role::Overrides => WriteKind::Overrides,
        });
    }
    for old in stale(dpc, &existing, &names) {
        api.delete(&old.name_any(), &DeleteParams::default())
            .await?;
        ctx.metrics.wrote(WriteKind::Delete);
        info!(namespace = %ns, configmap = %old.name_any(), "deleted a ConfigMap this resource no longer produces");
    }
    if written > 0 {
        info!(
            namespace = %ns, name = %name, written, hash = %rendered.config.hash,
            pods = rendered.stats.pods_applied, largest_shard_bytes = rendered.stats.largest_shard_bytes,
            "ConfigMaps updated"
        );
    }

    report_problems(dpc, ctx, &ns, &rendered.problems, &snapshot).await;
    let pods_with = |reason: &str| {
        let n = rendered
            .problems
            .iter()
            .filter(|p| p.reason == reason)
            .map(|p| p.uid.as_str())
            .collect::<HashSet<_>>()
            .len();
        u32::try_from(n).unwrap_or(u32::MAX)
    };
    write_status(
        dpc,
        ctx,
        &ns,
        Outcome::Applied {
            rendered: &rendered,
            invalid_pods: pods_with(INVALID_ANNOTATION),
            refused_pods: pods_with(ANNOTATION_NOT_GRANTED),
        },
    )
    .await?;
    Ok((ReconcileResult::Applied, Action::requeue(RESYNC)))
}

/// Claims an unlabeled resource for this operator's release: its status names the release,
/// written only if the resource is still the version read (`resourceVersion` in the apply:
/// of two releases claiming at once, the second gets a conflict). Returns the resource as
/// claimed.
async fn claim(dpc: &DotProxyConfig, ctx: &Context) -> Result<DotProxyConfig, Error> {
    let ns = dpc.namespace().ok_or(Error::NoNamespace)?;
    let mut status = dpc.status.clone().unwrap_or_default();
    status.release = ctx.release.clone();
    let patch = serde_json::json!({
        "apiVersion": DotProxyConfig::api_version(&()),
        "kind": DotProxyConfig::kind(&()),
        "metadata": {"resourceVersion": dpc.resource_version()},
        "status": serde_json::to_value(&status)?,
    });
    apply_status(ctx, &ns, &dpc.name_any(), &patch).await?;
    info!(namespace = %ns, name = %dpc.name_any(), release = ?ctx.release, "claimed a resource without a release label");
    let mut claimed = dpc.clone();
    claimed.status = Some(status);
    Ok(claimed)
}

/// Says a failed read or write in the status, best effort (the API server may be what
/// fails); the caller returns the error, which the error policy retries.
async fn write_failed(dpc: &DotProxyConfig, ctx: &Context, ns: &str, why: &str) {
    if let Err(e) = write_status(dpc, ctx, ns, Outcome::WriteFailed(why)).await {
        warn!(error = %e, namespace = %ns, name = %dpc.name_any(), "could not record the failure in the status");
    }
}

async fn write_status(
    dpc: &DotProxyConfig,
    ctx: &Context,
    ns: &str,
    outcome: Outcome<'_>,
) -> Result<(), Error> {
    let mut status = desired_status(
        dpc.status.as_ref(),
        dpc.metadata.generation,
        outcome,
        &(ctx.now)(),
    );
    if ctx.release.is_some() {
        // Every status write carries the claim (the one field manager owns the whole status).
        status.release = ctx.release.clone();
    }
    status.unknown_fields = dpc.spec.unknown_fields.clone();
    if dpc.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let patch = serde_json::json!({
        "apiVersion": DotProxyConfig::api_version(&()),
        "kind": DotProxyConfig::kind(&()),
        "status": serde_json::to_value(&status)?,
    });
    apply_status(ctx, ns, &dpc.name_any(), &patch).await
}

/// Server-side applies a status patch as the operator's field manager, counted.
async fn apply_status(
    ctx: &Context,
    ns: &str,
    name: &str,
    patch: &serde_json::Value,
) -> Result<(), Error> {
    let api: Api<DotProxyConfig> = Api::namespaced(ctx.client.clone(), ns);
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(patch),
    )
    .await?;
    ctx.metrics.wrote(WriteKind::Status);
    Ok(())
}

/// One Warning Event per pod and message. A failed Event is logged, never fatal: the
/// ConfigMaps are already written.
async fn report_problems(
    dpc: &DotProxyConfig,
    ctx: &Context,
    ns: &str,
    problems: &[PodProblem],
    snapshot: &Snapshot,
) {
    let mut reported = ctx.reported.lock().await;
    let live: HashSet<&str> = snapshot.pods.iter().map(|p| p.uid.as_str()).collect();
    reported.retain(|uid, _| live.contains(uid.as_str()));
    for p in problems {
        let note = format!("{} (DotProxyConfig {ns}/{})", p.message, dpc.name_any());
        if !reported
            .entry(p.uid.clone())
            .or_default()
            .insert(note.clone())
        {
            continue;
        }
        let event = Event {
            type_: EventType::Warning,
            reason: p.reason.into(),
            note: Some(note),
            action: "RenderOverrides".into(),
            secondary: None,
        };
        let regarding = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some(p.namespace.clone()),
            name: Some(p.name.clone()),
            uid: Some(p.uid.clone()),
            ..Default::default()
        };
        match ctx.recorder.publish(&event, &regarding).await {
            Ok(()) => ctx.metrics.wrote(WriteKind::Event),
            Err(error) => {
                warn!(%error, pod = %p.name, namespace = %p.namespace, "could not record an Event")
            }
        }
    }
}

pub fn error_policy(dpc: Arc<DotProxyConfig>, error: &Error, _ctx: Arc<Context>) -> Action {
    warn!(%error, namespace = ?dpc.namespace(), name = %dpc.name_any(), "reconcile failed; retrying");
    Action::requeue(RETRY)
}

/// Options of `dot-proxy-operator run` that reach the controller.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Watch DotProxyConfigs (and write ConfigMaps) only here; `None`: every namespace.
    pub namespace: Option<String>,
    /// Act only on this release's DotProxyConfigs ([`scope`]); `None`: on every one.
    pub release: Option<String>,
    /// Quiet time before a burst of pod changes is rendered.
    pub debounce: Duration,
    /// How long the controller may take to stop once `shutdown` completes; past it, it is
    /// dropped (its watches may never have synced: an API server out of reach).
    pub stop_grace: Duration,
}

/// [`RunOptions::stop_grace`] of `dot-proxy-operator run`.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// Runs the pod/node view and the controller until `shutdown` completes.
pub async fn run(
    client: Client,
    opts: RunOptions,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (tx, rx) = watch::channel(Arc::new(Snapshot::default()));
    let view = tokio::spawn(cluster::run(
        client.clone(),
        opts.debounce,
        tx,
        metrics.clone(),
    ));

    let mut synced = rx.clone();
    let ready = tokio::spawn(async move {
        while synced.changed().await.is_ok() {
            if synced.borrow().synced {
                health.set_ready(true);
                return;
            }
        }
    });

    let dpcs: Api<DotProxyConfig> = match &opts.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    // Our ConfigMaps, metadata only (`Api<PartialObjectMeta<_>>` makes metadata-only
    // requests): an edit or a deletion re-renders the resource that owns them.
    let cms: Api<PartialObjectMeta<ConfigMap>> = match &opts.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let owned = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={FIELD_MANAGER}"));
    let ctx = Arc::new(Context::new(client, rx.clone(), metrics).for_release(opts.release.clone()));
    // A graceful stop lets reconciles in progress finish; it cannot end a watch that never
    // synced (an API server out of reach), so past `stop_grace` the controller is dropped.
    let shutdown = futures::FutureExt::shared(shutdown);
    let controller = Controller::new(dpcs, watcher::Config::default().any_semantic())
        .with_config(kube::runtime::controller::Config::default().debounce(opts.debounce))
        .reconcile_all_on(cluster::changes(rx))
        .owns(cms, owned)
        .graceful_shutdown_on(shutdown.clone())
        .run(reconcile, error_policy, ctx)
        .for_each(|result| {
            if let Err(error) = result {
                debug!(%error, "controller event");
            }
            std::future::ready(())
        });
    let grace = opts.stop_grace;
    tokio::select! {
        _ = controller => {}
        _ = async { shutdown.await; tokio::time::sleep(grace).await } => {
            tracing::warn!(grace = ?grace, "the controller did not stop in time; stopping anyway");
        }
    }
    view.abort();
    ready.abort();
}
