//! Selection, failover within a query and health, against fake servers in paused time.

use std::sync::atomic::AtomicUsize;
use std::sync::Mutex;

use super::*;
use crate::upstream::{ExchangeFuture, UpstreamStats};

#[derive(Clone, Copy, Debug)]
enum Mode {
    /// Answers NOERROR after this long.
    Answer(Duration),
    /// Answers SERVFAIL at once.
    ServFail,
    /// Never answers.
    Stall,
    /// Fails to connect at once.
    Refuse,
}

struct Fake {
    label: String,
    stats: UpstreamStats,
    mode: Mutex<Mode>,
    calls: AtomicUsize,
}

impl Fake {
    fn new(label: &str, mode: Mode) -> Arc<Fake> {
        Arc::new(Fake {
            label: label.into(),
            stats: UpstreamStats::new(&UpstreamMetrics::default(), "g", label),
            mode: Mutex::new(mode),
            calls: AtomicUsize::new(0),
        })
    }
    fn set(&self, mode: Mode) {
        *self.mode.lock().expect("lock") = mode;
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Exchange for Fake {
    fn query<'a>(&'a self, msg: &'a Bytes) -> ExchangeFuture<'a> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mode = *self.mode.lock().expect("lock");
        Box::pin(async move {
            let mut r = msg.to_vec();
            r[2] |= 0x80;
            match mode {
                Mode::Answer(d) => {
                    tokio::time::sleep(d).await;
                    Ok(Bytes::from(r))
                }
                Mode::ServFail => {
                    r[3] = (r[3] & 0xF0) | rcode::SERVFAIL;
                    Ok(Bytes::from(r))
                }
                Mode::Stall => std::future::pending().await,
                Mode::Refuse => Err(UpstreamError::Connect("refused".into())),
            }
        })
    }
    fn label(&self) -> &str {
        &self.label
    }
    fn stats(&self) -> &UpstreamStats {
        &self.stats
    }
}

const MS: Duration = Duration::from_millis(1);

fn group(policy: Policy, fakes: &[&Arc<Fake>]) -> (Arc<Group>, UpstreamMetrics) {
    let metrics = UpstreamMetrics::default();
    let upstreams = fakes
        .iter()
        .map(|f| Arc::clone(f) as Arc<dyn Exchange>)
        .collect();
    let g = Group::new(
        "g".into(),
        policy,
        Duration::from_secs(2),
        upstreams,
        UpstreamQueryOptions::default(),
        &metrics,
    );
    (g, metrics)
}

fn query() -> Bytes {
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    q.extend_from_slice(b"\x01a\x00\x00\x01\x00\x01");
    Bytes::from(q)
}

/// Failovers of the test group "g" for `reason`.
fn failovers(m: &UpstreamMetrics, reason: FailoverReason) -> u64 {
    m.group_failovers
        .get_or_create(&FailoverLabels {
            group: "g".into(),
            reason,
        })
        .get()
}

async fn timed(g: &Group) -> (Result<Bytes, GroupError>, Duration) {
    let t = Instant::now();
    let r = g.query(&query()).await;
    (r, t.elapsed())
}

#[tokio::test(start_paused = true)]
async fn a_silent_first_server_is_overtaken_after_its_attempt_timeout() {
    let a = Fake::new("a", Mode::Stall);
    let b = Fake::new("b", Mode::Answer(5 * MS));
    let (g, _m) = group(Policy::Failover, &[&a, &b]);
    let (r, took) = timed(&g).await;
    assert!(r.is_ok());
    // Before any RTT is known: the initial attempt timeout, then b's 5 ms.
    assert_eq!(took, INITIAL_ATTEMPT + 5 * MS);
    assert_eq!((a.calls(), b.calls()), (1, 1));
    // Two more overtakes and a is out of use; b alone answers at once.
    for _ in 0..2 {
        assert!(timed(&g).await.0.is_ok());
    }
    assert!(!g.members()[0].health.is_up());
    let (r, took) = timed(&g).await;
    assert!(r.is_ok());
    assert_eq!(took, 5 * MS);
    assert_eq!(a.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn the_attempt_timeout_follows_the_servers_rtt() {
    let a = Fake::new("a", Mode::Answer(20 * MS));
    let b = Fake::new("b", Mode::Answer(5 * MS));
    let (g, _m) = group(Policy::Failover, &[&a, &b]);
    for _ in 0..20 {
        assert_eq!(timed(&g).await.1, 20 * MS);
    }
    // 20 ms steady: SRTT + 4·RTTVAR is under the 100 ms floor.
    assert_eq!(g.attempt_timeout(0), MIN_ATTEMPT);
    a.set(Mode::Stall);
    let (r, took) = timed(&g).await;
    assert!(r.is_ok());
    assert_eq!(took, MIN_ATTEMPT + 5 * MS);
    // A server slower than its usual self but within its timeout still wins.
    a.set(Mode::Answer(60 * MS));
    assert_eq!(timed(&g).await.1, 60 * MS);
    assert_eq!(b.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_late_answer_is_dropped_and_the_ceiling_is_half_the_group_timeout() {
    let a = Fake::new("a", Mode::Answer(Duration::from_secs(5)));
    let b = Fake::new("b", Mode::Stall);
    let (g, _m) = group(Policy::Failover, &[&a, &b]);
    // a answers after 5 s, b never: the group timeout (2 s) bounds the whole query.
    let (r, took) = timed(&g).await;
    assert_eq!(r, Err(GroupError::Timeout));
    assert_eq!(took, Duration::from_secs(2));
    // However slow a server has been, the next one is asked by half the group timeout.
    for _ in 0..30 {
        g.members()[0].health.rtt.observe(Duration::from_secs(3));
    }
    assert_eq!(g.attempt_timeout(0), Duration::from_secs(1));
}

/// The group's deadline ends the query: no server is asked at or after it, so none is
/// charged a timeout (and a failover) for a query it never had time to answer.
#[tokio::test(start_paused = true)]
async fn no_server_is_asked_at_the_group_deadline() {
    let a = Fake::new("a", Mode::Stall);
    let b = Fake::new("b", Mode::Stall);
    let c = Fake::new("c", Mode::Answer(MS));
    let (g, m) = group(Policy::Failover, &[&a, &b, &c]);
    // Slow servers: each has the ceiling of half the group timeout (1 s), so a is
    // overtaken by b at 1 s and b's turn would end at the 2 s deadline.
    for i in 0..2 {
        for _ in 0..30 {
            g.members()[i].health.rtt.observe(Duration::from_secs(3));
        }
    }
    let (r, took) = timed(&g).await;
    assert_eq!(r, Err(GroupError::Timeout));
    assert_eq!(took, Duration::from_secs(2));
    assert_eq!((a.calls(), b.calls(), c.calls()), (1, 1, 0));
    assert_eq!(failovers(&m, FailoverReason::slow), 1);
    assert_eq!(failovers(&m, FailoverReason::error), 0);
}

#[tokio::test(start_paused = true)]
async fn errors_and_servfail_move_on_at_once() {
    let a = Fake::new("a", Mode::Refuse);
    let b = Fake::new("b", Mode::ServFail);
    let c = Fake::new("c", Mode::Answer(3 * MS));
    let (g, m) = group(Policy::Failover, &[&a, &b, &c]);
    let (r, took) = timed(&g).await;
    assert_eq!(took, 3 * MS);
    let r = r.expect("answer");
    assert_eq!(header::rcode(&r), rcode::NOERROR);
    // A refused connect takes a server out at once; a SERVFAIL does not.
    assert!(!g.members()[0].health.is_up());
    assert!(g.members()[1].health.is_up());
    assert_eq!(failovers(&m, FailoverReason::error), 1);
    assert_eq!(failovers(&m, FailoverReason::servfail), 1);
    // Nobody better than SERVFAIL: the SERVFAIL is the answer.
    c.set(Mode::Refuse);
    let r = timed(&g).await.0.expect("servfail answer");
    assert_eq!(header::rcode(&r), rcode::SERVFAIL);
}

#[tokio::test(start_paused = true)]
async fn timeouts_never_take_the_last_usable_server_out() {
    let a = Fake::new("a", Mode::Stall);
    let (g, _m) = group(Policy::Failover, &[&a]);
    for _ in 0..5 {
        assert_eq!(timed(&g).await.0, Err(GroupError::Timeout));
    }
    assert!(g.members()[0].health.is_up());
    a.set(Mode::Answer(MS));
    assert!(timed(&g).await.0.is_ok());
}

#[tokio::test(start_paused = true)]
async fn when_every_server_is_down_queries_still_go_and_bring_one_back() {
    let a = Fake::new("a", Mode::Refuse);
    let b = Fake::new("b", Mode::Refuse);
    let (g, _m) = group(Policy::Failover, &[&a, &b]);
    assert!(timed(&g).await.0.is_err());
    assert!(!g.any_up());
    // Down, in backoff, but still asked: the first good answer is served and brings
    // its server back, without waiting for the backoff or a probe.
    b.set(Mode::Answer(2 * MS));
    let (r, took) = timed(&g).await;
    assert!(r.is_ok());
    assert_eq!(took, 2 * MS);
    assert!(g.members()[1].health.is_up());
    assert!(!g.members()[0].health.is_up());
    // Now b is the usable one: a is left alone.
    let before = a.calls();
    assert!(timed(&g).await.0.is_ok());
    assert_eq!(a.calls(), before);
}

#[tokio::test(start_paused = true)]
async fn probes_respect_backoff_while_another_server_serves() {
    let a = Fake::new("a", Mode::Refuse);
    let b = Fake::new("b", Mode::Answer(MS));
    let (g, _m) = group(Policy::Failover, &[&a, &b]);
    assert!(timed(&g).await.0.is_ok());
    assert!(!g.members()[0].health.is_up());
    let calls = a.calls();
    g.probe_down_members().await; // within the backoff: not probed
    assert_eq!(a.calls(), calls);
    tokio::time::advance(MIN_BACKOFF + MS).await;
    g.probe_down_members().await; // probed, fails: backoff doubles
    assert_eq!(a.calls(), calls + 1);
    tokio::time::advance(MIN_BACKOFF + MS).await;
    g.probe_down_members().await;
    assert_eq!(a.calls(), calls + 1, "doubled backoff not over yet");
    a.set(Mode::Answer(MS));
    tokio::time::advance(MIN_BACKOFF).await;
    g.probe_down_members().await;
    assert!(g.members()[0].health.is_up());
    // A probe answered slower than half the group timeout does not bring a server back.
    let c = Fake::new("c", Mode::Refuse);
    let d = Fake::new("d", Mode::Answer(MS));
    let (g, _m) = group(Policy::Failover, &[&c, &d]);
    assert!(timed(&g).await.0.is_ok());
    c.set(Mode::Answer(Duration::from_millis(1500)));
    tokio::time::advance(MIN_BACKOFF + MS).await;
    g.probe_down_members().await;
    assert!(!g.members()[0].health.is_up());
}

#[tokio::test(start_paused = true)]
async fn race_asks_two_at_once_and_the_first_good_answer_wins() {
    let a = Fake::new("a", Mode::Answer(30 * MS));
    let b = Fake::new("b", Mode::Answer(10 * MS));
    let (g, _m) = group(Policy::Race, &[&a, &b]);
    let (r, took) = timed(&g).await;
    assert!(r.is_ok());
    assert_eq!(took, 10 * MS);
    assert_eq!((a.calls(), b.calls()), (1, 1));
    // The slower one losing a race is no failure.
    for _ in 0..5 {
        assert!(timed(&g).await.0.is_ok());
    }
    assert!(g.members().iter().all(|m| m.health.is_up()));
}
