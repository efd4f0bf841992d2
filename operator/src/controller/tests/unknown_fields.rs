//! A resource written for a newer CRD, read by this (older) operator: the fields it does
//! not know are left out, the rest is applied, and the status names them (issue 32).

use super::*;

/// Fails on the code before it: the object did not decode (`deny_unknown_fields`). Fields
/// this build does not know (at the top and inside sections) are left out, everything else
/// is applied, and the status names them.
#[tokio::test]
async fn fields_of_a_newer_crd_are_ignored_and_reported() {
    let Setup { mut api, ctx, .. } = setup(snapshot(Vec::new()));
    // The object as the watch delivers it: JSON from the API server, decoded by this build.
    let mut doc = serde_json::to_value(dpc(1)).expect("json");
    doc["spec"]["hedging"] = json!({"after": "50ms"});
    doc["spec"]["cache"]["shards"] = json!(16);
    doc["spec"]["upstreamGroups"][0]["servers"][0]["ech"] = json!(true);
    let newer: DotProxyConfig = serde_json::from_value(doc).expect("decodes");
    let (action, sent) = api
        .serve_while(reconcile(Arc::new(newer), ctx.clone()))
        .await;
    action.expect("reconciled");
    let sent = after_gets(sent, &ALL3);
    assert_eq!(lines(&sent), requests(2, &[STATUS]));
    let status = api.status.clone().expect("status");
    assert_eq!(
        condition(&status, "Ready")["status"],
        "True",
        "the known fields are applied"
    );
    assert_eq!(
        status["unknownFields"],
        json!([
            "spec.cache.shards",
            "spec.hedging",
            "spec.upstreamGroups[].servers[].ech"
        ])
    );
    // Without them, the list is gone from the status.
    let (action, _) = api
        .serve_while(reconcile(api.resource(2, |_| {}), ctx.clone()))
        .await;
    action.expect("reconciled");
    let status = api.status.clone().expect("status");
    assert!(status.get("unknownFields").is_none(), "{status}");
}
