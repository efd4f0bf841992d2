//! The pipeline's logic under paused time: cache, serve-stale, prefetch, coalescing and
//! failover through `Pipeline::handle_fast` and `resolve` over fake servers (the test
//! kit's `Rig`), with no socket and no wall-clock wait. Time moves only when the test
//! moves it, or when every task waits on a timer (tokio's auto-advance).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::support::{a_records, settle, Rig};
use dot_proxy::config::{Dur, Policy};

const A: RecordType = RecordType::A;

/// Replaces `stale_served_at_once_when_every_upstream_is_down_and_refreshed_after` (which
/// polled a real proxy): an expired answer is served at once, with `stale_ttl`, while the
/// upstream fails, and the first query after it recovers is answered fresh.
#[tokio::test(start_paused = true)]
async fn stale_is_served_while_the_upstream_fails_and_fresh_once_it_answers() {
    let rig = Rig::start(1, |_| {});
    rig.ask("ttl10.example.test.", A).await;
    rig.up().behaviour.servfail.store(true, Ordering::SeqCst);
    rig.advance(Duration::from_secs(20)).await;
    let m = rig.ask("ttl10.example.test.", A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(m.answers[0].ttl, 30, "stale answers carry stale_ttl");
    assert_eq!(rig.shared.cache.stale(), 1);
    rig.up().behaviour.servfail.store(false, Ordering::SeqCst);
    settle().await;
    let m = rig.ask("ttl10.example.test.", A).await;
    assert_eq!(m.answers[0].ttl, 10, "fresh again");
}

/// Beyond `stale_max_age` an expired answer is not served: SERVFAIL.
#[tokio::test(start_paused = true)]
async fn nothing_stale_is_served_past_the_stale_window() {
    let rig = Rig::start(1, |c| c.cache.stale_max_age = Dur::secs(60));
    rig.ask("ttl10.example.test.", A).await;
    rig.up().down.store(true, Ordering::SeqCst);
    rig.advance(Duration::from_secs(71)).await;
    let m = rig.ask("ttl10.example.test.", A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(rig.shared.cache.stale(), 0);
}

/// `cache::prefetch_keeps_a_hot_name_from_ever_missing` without sockets, with exact counts:
/// a name asked often is refreshed in the last tenth of its TTL, round after round, and
/// never misses again.
#[tokio::test(start_paused = true)]
async fn prefetch_keeps_a_hot_name_from_ever_missing() {
    let rig = Rig::start(1, |_| {});
    rig.ask("ttl20.example.test.", A).await;
    for round in 0..4 {
        let before = rig.up().query_count();
        for _ in 0..3 {
            rig.ask("ttl20.example.test.", A).await;
            rig.advance(Duration::from_secs(6)).await;
        }
        // At 18 s of 20, hits: one starts a refresh in the background.
        for _ in 0..3 {
            let m = rig.ask("ttl20.example.test.", A).await;
            assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        }
        settle().await;
        assert_eq!(
            rig.up().query_count(),
            before + 1,
            "round {round}: one refresh"
        );
    }
    assert_eq!(rig.shared.cache.misses(), 1, "only the first query missed");
    assert_eq!(rig.shared.cache.prefetches(), 4);
}

/// Replaces `a_refresh_answered_servfail_keeps_the_valid_answer_without_serve_stale`
/// (real sleeps): a prefetch answered SERVFAIL leaves the still-valid answer in place, with
/// serve-stale off, until its TTL ends.
#[tokio::test(start_paused = true)]
async fn a_refresh_answered_servfail_keeps_the_valid_answer_without_serve_stale() {
    let rig = Rig::start(1, |c| c.cache.stale_max_age = Dur::secs(0));
    for _ in 0..7 {
        rig.ask("ttl20.example.test.", A).await;
    }
    rig.up().behaviour.servfail.store(true, Ordering::SeqCst);
    let before = rig.up().query_count();
    rig.advance(Duration::from_secs(18)).await;
    let m = rig.ask("ttl20.example.test.", A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    settle().await;
    assert_eq!(rig.up().query_count(), before + 1, "prefetched");
    let m = rig.ask("ttl20.example.test.", A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(a_records(&m).len(), 1);
    assert_eq!(
        m.answers[0].ttl, 2,
        "the cached answer, for the TTL it has left"
    );
    rig.advance(Duration::from_secs(3)).await;
    let m = rig.ask("ttl20.example.test.", A).await;
    assert_eq!(
        m.metadata.response_code,
        ResponseCode::ServFail,
        "expired now"
    );
}

/// Identical misses in flight at once are one upstream query; the others wait for it.
#[tokio::test(start_paused = true)]
async fn identical_misses_share_one_upstream_query() {
    let rig = Arc::new(Rig::start(1, |_| {}));
    rig.up().behaviour.delay_ms.store(200, Ordering::SeqCst);
    let mut asks = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let rig = rig.clone();
        asks.spawn(async move { rig.ask("same.example.test.", A).await });
    }
    while let Some(m) = asks.join_next().await {
        let m = m.expect("ask");
        assert_eq!(a_records(&m).len(), 1);
    }
    assert_eq!(rig.up().query_count(), 1);
    assert_eq!(rig.shared.cache.coalesced(), 9);
}

/// Failover within one query: a refusing first server costs no time, a silent one its
/// attempt timeout, and the answer comes from the next server; with every server failing
/// the client gets SERVFAIL within the group's timeout.
#[tokio::test(start_paused = true)]
async fn a_query_fails_over_to_the_next_server_within_the_group_timeout() {
    let rig = Rig::start(2, |c| {
        c.cache.enabled = false;
        c.upstream_groups[0].policy = Policy::Failover;
        c.upstream_groups[0].timeout = Dur::millis(1500);
    });
    let (first, second) = (&rig.servers[0][0], &rig.servers[0][1]);
    first.down.store(true, Ordering::SeqCst);
    let t = tokio::time::Instant::now();
    let m = rig.ask("a.example.test.", A).await;
    assert_eq!(a_records(&m).len(), 1);
    assert_eq!(t.elapsed(), Duration::ZERO, "a refusal moves on at once");
    assert_eq!(second.query_count(), 1);

    first.down.store(false, Ordering::SeqCst);
    first.behaviour.stall.store(true, Ordering::SeqCst);
    let t = tokio::time::Instant::now();
    let m = rig.ask("b.example.test.", A).await;
    assert_eq!(a_records(&m).len(), 1);
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );

    second.down.store(true, Ordering::SeqCst);
    let t = tokio::time::Instant::now();
    let m = rig.ask("c.example.test.", A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert!(
        t.elapsed() <= Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
}

/// A zone routed to its own group is asked there, and only there.
#[tokio::test(start_paused = true)]
async fn a_zone_is_asked_of_its_own_group() {
    use dot_proxy::config::{UpstreamGroup, ZoneRoute};
    let rig = Rig::start(1, |c| {
        c.upstream_groups.push(UpstreamGroup {
            name: "corp".into(),
            policy: Policy::Failover,
            timeout: Dur::secs(1),
            servers: Vec::new(),
        });
        c.zones.push(ZoneRoute {
            zone: "corp.example.test".into(),
            group: "corp".into(),
        });
    });
    rig.ask("www.corp.example.test.", A).await;
    rig.ask("www.example.test.", A).await;
    assert_eq!(rig.servers[0][0].query_count(), 1);
    assert_eq!(rig.servers[1][0].query_count(), 1);
}
