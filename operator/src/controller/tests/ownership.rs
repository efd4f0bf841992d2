//! Issue 32, part 2: the reconciler checks who owns a ConfigMap before it writes one.

use super::*;

/// A ConfigMap someone made by hand, under the name the resource writes to.
fn foreign(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": NS,
                     "managedFields": [{"manager": "kubectl-create", "operation": "Update", "apiVersion": "v1"}]},
        "data": {"app.properties": "mine=1\n"},
    })
}

fn ready(status: &Value) -> (String, String, String) {
    let c = condition(status, "Ready");
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    (s("status"), s("reason"), s("message"))
}

/// A foreign ConfigMap under `name`, then a reconcile that must refuse (requeued, not an
/// error) and leave every ConfigMap as it was; what it sent.
async fn refused_with_foreign(api: &mut FakeApi, ctx: &Arc<Context>, name: &str) -> Vec<Sent> {
    api.config_maps.insert(name.into(), foreign(name));
    let before = api.config_maps.clone();
    let (action, sent) = api
        .serve_while(reconcile(api.resource(1, |_| {}), ctx.clone()))
        .await;
    assert_eq!(
        action.expect("a refusal is not an error"),
        Action::requeue(Duration::from_secs(15))
    );
    assert_eq!(api.config_maps, before, "nothing written");
    sent
}

/// Fails without the ownership check: the foreign ConfigMap was force-applied over.
#[tokio::test]
async fn a_foreign_config_map_of_the_same_name_is_not_overwritten() {
    let Setup { mut api, ctx, .. } = setup(snapshot(vec![]));
    let sent = refused_with_foreign(&mut api, &ctx, "dot-proxy-config").await;
    assert_eq!(
        lines(&sent),
        [
            LIST.to_string(),
            format!("GET {CM_PATH}/dot-proxy-config"),
            STATUS.to_string()
        ]
    );
    let (status, reason, message) = ready(api.status.as_ref().expect("status"));
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "ConfigMapNotOwned")
    );
    assert!(
        message.contains("ConfigMap dot-proxy-config is not overwritten")
            && message.contains("kubectl-create")
            && message.contains("spec.target.configMapName"),
        "{message}"
    );
    assert!(ctx
        .metrics
        .encode()
        .contains("dot_proxy_operator_reconciles_total{result=\"refused\"} 1"));

    // Once the foreign one is gone, the resource writes its ConfigMaps and is Ready.
    api.config_maps.clear();
    let (_, sent) = api
        .serve_while(reconcile(api.resource(1, |_| {}), ctx.clone()))
        .await;
    assert!(sent.iter().any(|s| s.line == cm_patch("dot-proxy-config")));
    assert_eq!(ready(api.status.as_ref().expect("status")).0, "True");
}

/// Ownership is checked for every name before anything is written: a foreign ConfigMap
/// under the name of the last shard leaves the main ConfigMap and the first shard unwritten
/// too (a check inside the write loop would have written them first).
#[tokio::test]
async fn a_foreign_shard_name_stops_every_write() {
    let Setup { mut api, ctx, .. } = setup(snapshot(vec![]));
    let last = "dot-proxy-config-overrides-1";
    let sent = refused_with_foreign(&mut api, &ctx, last).await;
    assert!(
        !sent.iter().any(|s| s.line.starts_with("PATCH /api/v1/")),
        "no ConfigMap written: {:?}",
        lines(&sent)
    );
    let (status, reason, message) = ready(api.status.as_ref().expect("status"));
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "ConfigMapNotOwned")
    );
    assert!(message.contains(last), "{message}");
}

/// Fails without the ownership check: the second resource overwrote the first one's
/// ConfigMaps (and took them over by its owner reference).
#[tokio::test]
async fn of_two_resources_with_one_config_map_name_only_the_first_owner_writes() {
    let Setup { mut api, ctx, .. } = setup(snapshot(vec![]));
    let (_, sent) = api
        .serve_while(reconcile(api.resource(1, |_| {}), ctx.clone()))
        .await;
    assert_eq!(after_gets(sent, &ALL3).len(), 5);
    let before = api.config_maps.clone();

    let mut other = dpc(1);
    other.metadata.name = Some("other".into());
    other.metadata.uid = Some("uid-2".into());
    let (action, sent) = api
        .serve_while(reconcile(Arc::new(other), ctx.clone()))
        .await;
    action.expect("refused, not an error");
    assert_eq!(
        lines(&sent),
        [
            "GET /api/v1/namespaces/dot-proxy/configmaps?&labelSelector=app.kubernetes.io%2Fmanaged-by%3Ddot-proxy-operator%2Cdns.dot-proxy.io%2Fconfig%3Dother".to_string(),
            format!("GET {CM_PATH}/dot-proxy-config"),
            "PATCH /apis/dns.dot-proxy.io/v1alpha1/namespaces/dot-proxy/dotproxyconfigs/other/status?&force=true&fieldManager=dot-proxy-operator".to_string(),
        ]
    );
    assert_eq!(
        api.config_maps, before,
        "the first owner's ConfigMaps are untouched"
    );
    let (status, reason, message) = ready(&api.statuses["other"]);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "ConfigMapNotOwned")
    );
    assert!(
        message.contains("belongs to DotProxyConfig dot-proxy/default (uid uid-1)"),
        "{message}"
    );

    // The first owner goes on as before: nothing to write.
    let (_, sent) = api
        .serve_while(reconcile(api.resource(1, |_| {}), ctx.clone()))
        .await;
    assert_eq!(lines(&sent), [LIST]);
}

/// A ConfigMap the operator wrote under its field manager but without a controller owner
/// reference (left by an orphaning delete of an earlier resource of that name, or
/// written before the resource had a uid) is adopted: written again, with the owner
/// reference, and Ready.
#[tokio::test]
async fn a_config_map_written_by_this_operator_without_an_owner_is_adopted() {
    let Setup { mut api, ctx, .. } = setup(snapshot(vec![]));
    api.config_maps.insert(
        "dot-proxy-config".into(),
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "dot-proxy-config", "namespace": NS,
                         "labels": {"app.kubernetes.io/managed-by": "dot-proxy-operator",
                                    "dns.dot-proxy.io/config": "default",
                                    "dns.dot-proxy.io/role": "config"},
                         "managedFields": [{"manager": "dot-proxy-operator", "operation": "Apply", "apiVersion": "v1"}]},
            "data": {"config.yaml": "listen: []\n"},
        }),
    );
    let (action, sent) = api
        .serve_while(reconcile(api.resource(1, |_| {}), ctx.clone()))
        .await;
    action.expect("reconciled");
    assert_eq!(
        lines(&sent),
        [
            LIST.to_string(),
            format!("GET {CM_PATH}/dot-proxy-config-overrides-0"),
            format!("GET {CM_PATH}/dot-proxy-config-overrides-1"),
            cm_patch("dot-proxy-config"),
            cm_patch("dot-proxy-config-overrides-0"),
            cm_patch("dot-proxy-config-overrides-1"),
            STATUS.to_string(),
        ]
    );
    assert_eq!(
        sent[3].body["metadata"]["ownerReferences"][0]["uid"], "uid-1",
        "adopted: the write adds the owner reference"
    );
    assert_eq!(ready(api.status.as_ref().expect("status")).1, "Rendered");
}

/// The ownership check's GET refused (a Role that names other ConfigMaps): said in the
/// status like a failed write, returned for retry, and nothing written.
#[tokio::test]
async fn a_refused_ownership_check_is_reported_like_a_failed_write() {
    let Setup { mut api, ctx, .. } = setup(snapshot(vec![]));
    api.forbid_gets = true;
    let (result, sent) = api
        .serve_while(reconcile(api.resource(1, |_| {}), ctx.clone()))
        .await;
    let err = result.expect_err("the 403 is returned");
    assert!(err.to_string().contains("forbidden"), "{err}");
    assert_eq!(
        lines(&sent),
        [
            LIST.to_string(),
            format!("GET {CM_PATH}/dot-proxy-config"),
            STATUS.to_string()
        ]
    );
    assert!(api.config_maps.is_empty());
    let (status, reason, message) = ready(api.status.as_ref().expect("status"));
    assert_eq!((status.as_str(), reason.as_str()), ("False", "WriteFailed"));
    assert!(
        message.contains("could not read ConfigMap dot-proxy-config")
            && message.contains("forbidden"),
        "{message}"
    );
}
