//! The hostile-client suite (issue 27, docs/security.md): the proxy binary runs as its own
//! process with a 64 MiB memory budget (`memory.limit`), is attacked as a pod on its node
//! could, and its peak resident size (VmHWM, read from /proc) must stay within the budget
//! while a well-behaved client on another address keeps getting its cached name.
//! Every load loop is bounded in count and time.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, UdpSocket};
use tokio::time::Instant;

use crate::support::*;

const BUDGET: u64 = 64 * 1024 * 1024;

/// One hostile run at a time: each loads the machine on purpose.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const CACHED: &str = "cached.example.test.";

struct Proc {
    child: Child,
    dns: SocketAddr,
    admin: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A line of /proc/PID/status in KiB (VmHWM: the peak resident size).
    fn status_kib(&self, field: &str) -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("the proxy is still running");
        text.lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} in /proc/PID/status"))
    }

    fn peak_rss(&self) -> u64 {
        self.status_kib("VmHWM:") * 1024
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    async fn metrics(&self) -> String {
        http_get(self.admin, "/metrics").await.1
    }
}

/// Starts the binary with a config made of `yaml` (listen and admin addresses added),
/// under `wrapper` (a command prefix, e.g. joining a cgroup), and waits until it serves.
async fn start(up: &Upstream, extra: &str, wrapper: Option<&str>) -> Proc {
    let dir = tempfile::tempdir().expect("tmp");
    let (port, admin_port) = (free_port(), free_port());
    let yaml = format!(
        "listen: [127.0.0.1:{port}]\nadmin: {{listen: 127.0.0.1:{admin_port}}}\nlog: {{level: warn}}\nworkers: 2\nupstream_groups:\n- name: default\n  timeout: 2s\n  servers:\n  - address: {}\n    tls_name: upstream.test\n    ca_file: {}\n{extra}",
        up.addr,
        up.pki.ca_file.display()
    );
    let file = dir.path().join("config.yaml");
    std::fs::write(&file, yaml).expect("write config");
    let bin = env!("CARGO_BIN_EXE_dot-proxy");
    let mut cmd = match wrapper {
        Some(w) => {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(format!("{w}; exec \"$0\" --config \"$1\"", w = w))
                .arg(bin)
                .arg(&file);
            c
        }
        None => {
            let mut c = Command::new(bin);
            c.arg("--config").arg(&file);
            c
        }
    };
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn dot-proxy");
    let p = Proc {
        child,
        dns: SocketAddr::from(([127, 0, 0, 1], port)),
        admin: SocketAddr::from(([127, 0, 0, 1], admin_port)),
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if udp_raw(
            p.dns,
            &query(1, "boot.example.test.", RecordType::A, None),
            Duration::from_millis(300),
        )
        .await
        .is_some()
        {
            return p;
        }
        assert!(Instant::now() < deadline, "the proxy did not start");
    }
}

/// Config lines `extra` with the test's memory budget.
fn budgeted(extra: &str) -> String {
    format!("memory: {{limit: {BUDGET}}}\n{extra}")
}

/// A DNS message with its TCP length prefix (RFC 7766).
fn framed(q: &[u8]) -> Vec<u8> {
    let mut frame = (q.len() as u16).to_be_bytes().to_vec();
    frame.extend_from_slice(q);
    frame
}

/// A query for `name` with an EDNS padding option of `pad` bytes (a frame of up to
/// 64 KiB that is a well-formed query).
fn padded_query(id: u16, name: &str, pad: usize) -> Vec<u8> {
    // The OPT record is the last thing in the query, its RDLENGTH (0) its last two bytes.
    let mut q = query(id, name, RecordType::A, Some((4096, false)));
    q.truncate(q.len() - 2);
    q.extend_from_slice(&((pad + 4) as u16).to_be_bytes());
    // Option 12 (padding).
    q.extend_from_slice(&12u16.to_be_bytes());
    q.extend_from_slice(&(pad as u16).to_be_bytes());
    q.resize(q.len() + pad, 0);
    q
}

/// A well-behaved client on its own address: asks for the cached name every 50 ms, as a
/// stub resolver would (up to three tries of 500 ms each), until `stop`. Returns how many
/// lookups it made and how many got no answer in all three tries.
fn well_behaved(dns: SocketAddr, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(u64, u64)> {
    tokio::spawn(async move {
        let sock = UdpSocket::bind("127.0.0.2:0")
            .await
            .expect("bind 127.0.0.2");
        let (mut lookups, mut failed) = (0u64, 0u64);
        let mut id = 0u16;
        let mut buf = vec![0u8; 4096];
        let mut pace = tokio::time::interval(Duration::from_millis(50));
        // Like a sleep after each round: a slow round does not bring a burst.
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !stop.load(Ordering::Relaxed) && lookups < 2_000 {
            lookups += 1;
            let mut ok = false;
            for _ in 0..3 {
                id = id.wrapping_add(1);
                let _ = sock
                    .send_to(&query(id, CACHED, RecordType::A, None), dns)
                    .await;
                let deadline = Instant::now() + Duration::from_millis(500);
                while let Ok(Ok((n, _))) =
                    tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await
                {
                    if n >= 12 && u16::from_be_bytes([buf[0], buf[1]]) == id {
                        ok = buf[3] & 0x0f == 0;
                        break;
                    }
                }
                if ok {
                    break;
                }
            }
            if !ok {
                failed += 1;
            }
            pace.tick().await;
        }
        (lookups, failed)
    })
}

/// The proxy with the memory budget against a fresh upstream, holding `SERIAL` (one
/// hostile test at a time).
async fn budgeted_alone() -> (tokio::sync::MutexGuard<'static, ()>, Arc<Upstream>, Proc) {
    let one = SERIAL.lock().await;
    let up = Upstream::start().await;
    let p = start(&up, &budgeted(""), None).await;
    (one, up, p)
}

/// The well-behaved client, running until `finish`.
struct Bystander {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(u64, u64)>,
}

impl Bystander {
    fn start(dns: SocketAddr) -> Bystander {
        let stop = Arc::new(AtomicBool::new(false));
        let task = well_behaved(dns, stop.clone());
        Bystander { stop, task }
    }

    /// Stops it: (lookups, lookups with no answer).
    async fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("well-behaved client")
    }
}

/// Asks for `CACHED`, so it is in the cache.
async fn cache(p: &Proc) {
    let m = udp(p.dns, CACHED, RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
}

/// Caches `CACHED`, then makes the upstream silent (connections stay up, nothing is ever
/// answered), so every miss waits its whole group timeout.
async fn cache_then_silence(up: &Upstream, p: &Proc) {
    cache(p).await;
    up.behaviour.stall.store(true, Ordering::SeqCst);
}

/// Checks the run: the process alive, its peak within the budget, the well-behaved
/// client answered every time. Returns the peak for the report.
async fn judge(p: &mut Proc, name: &str, good: Bystander) -> u64 {
    let (lookups, failed) = good.finish().await;
    assert!(p.alive(), "{name}: the proxy died");
    let peak = p.peak_rss();
    let metrics = p.metrics().await;
    let shed = metric(&metrics, "dot_proxy_overload_shed_total{");
    eprintln!(
        "hostile {name}: peak RSS {:.1} MiB of a {} MiB budget; shed {shed}; well-behaved lookups {lookups}, failed {failed}",
        peak as f64 / 1048576.0,
        BUDGET >> 20
    );
    assert!(
        peak <= BUDGET,
        "{name}: peak RSS {peak} bytes over the {BUDGET}-byte budget"
    );
    assert!(lookups > 10, "{name}: the well-behaved client ran");
    assert_eq!(failed, 0, "{name}: the well-behaved client lost answers");
    peak
}

/// 16 TCP connections from one pod, each pipelining 256 queries of ~64 KB (EDNS padding)
/// for unique names, against an upstream that never answers. Before the budget: 322 MB.
async fn big_pipelined_tcp(p: &mut Proc, up: &Upstream, name: &str) -> u64 {
    cache_then_silence(up, p).await;
    let good = Bystander::start(p.dns);
    let written = Arc::new(AtomicU64::new(0));
    let mut conns = Vec::new();
    for c in 0..16u16 {
        let (dns, written) = (p.dns, written.clone());
        conns.push(tokio::spawn(async move {
            let Ok(mut s) = tokio::net::TcpStream::connect(dns).await else {
                return;
            };
            let deadline = Instant::now() + Duration::from_secs(8);
            for i in 0..256u16 {
                let q = padded_query(i, &format!("big{c}-{i}.example.test."), 65_000);
                let frame = framed(&q);
                match tokio::time::timeout_at(deadline, s.write_all(&frame)).await {
                    Ok(Ok(())) => {
                        written.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => break,
                }
            }
            // Hold the connection (never reading the answers) a moment longer.
            tokio::time::sleep_until(deadline).await;
        }));
    }
    for c in conns {
        let _ = c.await;
    }
    eprintln!(
        "hostile {name}: {} frames of 65 KB written",
        written.load(Ordering::Relaxed)
    );
    judge(p, name, good).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_big_pipelined_tcp_queries_against_a_silent_upstream() {
    let (_one, up, mut p) = budgeted_alone().await;
    big_pipelined_tcp(&mut p, &up, "big-tcp").await;
}

/// dnstap on, its collector away, and 64 KB queries answered by a static rule: every
/// answer is a query log event holding both messages. Before the budget: 645 MB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_dnstap_without_a_collector_and_big_queries() {
    let _one = SERIAL.lock().await;
    let up = Upstream::start().await;
    let sock_dir = tempfile::tempdir().expect("tmp");
    let extra = budgeted(&format!(
        "dnstap: {{enabled: true, socket: {}}}\npolicy:\n  static_answers:\n  - {{name: static.example.test, a: [192.0.2.7]}}\n",
        sock_dir.path().join("nobody.sock").display()
    ));
    let mut p = start(&up, &extra, None).await;
    cache_then_silence(&up, &p).await;
    let good = Bystander::start(p.dns);
    let mut conns = Vec::new();
    for _ in 0..16 {
        let dns = p.dns;
        conns.push(tokio::spawn(async move {
            let Ok(mut s) = tokio::net::TcpStream::connect(dns).await else {
                return;
            };
            let (mut rd, mut wr) = s.split();
            // Answers are read (and thrown away) so only the query log can grow.
            let reader = async {
                let mut sink = vec![0u8; 65_536];
                while let Ok(n) = tokio::io::AsyncReadExt::read(&mut rd, &mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
            };
            let writer = async {
                for i in 0..256u16 {
                    let q = padded_query(i, "static.example.test.", 65_000);
                    let frame = framed(&q);
                    if wr.write_all(&frame).await.is_err() {
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                let _ = wr.shutdown().await;
            };
            let _ = tokio::time::timeout(Duration::from_secs(15), async {
                tokio::join!(reader, writer)
            })
            .await;
        }));
    }
    for c in conns {
        let _ = c.await;
    }
    let metrics = p.metrics().await;
    assert!(
        metric(&metrics, "dot_proxy_dnstap_dropped_total") > 0.0,
        "the query log dropped what did not fit"
    );
    judge(&mut p, "dnstap", good).await;
}

/// 10,000 queries a second for unique names, for 30 s, against an upstream that never
/// answers: misses past the inflight share are answered REFUSED instead of queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_unique_names_at_10000_qps_against_a_silent_upstream() {
    let (_one, up, mut p) = budgeted_alone().await;
    cache_then_silence(&up, &p).await;
    let good = Bystander::start(p.dns);
    let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
    let answers = Arc::new(AtomicU64::new(0));
    let reader = {
        let (sock, answers) = (sock.clone(), answers.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_secs(3), sock.recv_from(&mut buf)).await
            {
                answers.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let start = Instant::now();
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    // 100 queries every 10 ms for 30 s: at most 300,000.
    while start.elapsed() < Duration::from_secs(30) && sent < 300_000 {
        tick.tick().await;
        for _ in 0..100 {
            let name = format!("u{sent}.flood.example.test.");
            let _ = sock
                .send_to(&query(sent as u16, &name, RecordType::A, None), p.dns)
                .await;
            sent += 1;
        }
    }
    let metrics = p.metrics().await;
    let _ = reader.await;
    eprintln!(
        "hostile flood: {sent} sent, {} answered (REFUSED when shed, SERVFAIL after the timeout)",
        answers.load(Ordering::Relaxed)
    );
    assert!(
        metric(
            &metrics,
            "dot_proxy_overload_shed_total{resource=\"inflight\"}"
        ) > 0.0,
        "misses past the share were shed"
    );
    judge(&mut p, "flood", good).await;
}

/// A slowloris flood: connections from 20 addresses (64 each, the per-client limit) that
/// send one byte of a frame, or nothing, and hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_slowloris_and_half_open_connections() {
    let (_one, _up, mut p) = budgeted_alone().await;
    cache(&p).await;
    let good = Bystander::start(p.dns);
    let mut held = Vec::new();
    for a in 10..30u8 {
        for i in 0..64 {
            let Ok(s) = TcpSocket::new_v4() else { continue };
            if s.bind(SocketAddr::from(([127, 0, 0, a], 0))).is_err() {
                continue;
            }
            if let Ok(Ok(mut c)) =
                tokio::time::timeout(Duration::from_millis(500), s.connect(p.dns)).await
            {
                if i % 2 == 0 {
                    let _ = c.write_all(&[0x01]).await;
                }
                held.push(c);
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    // A well-behaved TCP client on its own address still gets its answer.
    let m = tcp_from("127.0.0.3", p.dns, CACHED).await;
    eprintln!("hostile slowloris: {} connections held", held.len());
    assert_eq!(m, Some(ResponseCode::NoError), "a TCP client still served");
    drop(held);
    judge(&mut p, "slowloris", good).await;
}

/// One TCP query from `src`: its rcode, or None.
async fn tcp_from(src: &str, dns: SocketAddr, name: &str) -> Option<ResponseCode> {
    let s = TcpSocket::new_v4().ok()?;
    s.bind(SocketAddr::new(src.parse().ok()?, 0)).ok()?;
    let mut c = tokio::time::timeout(Duration::from_secs(2), s.connect(dns))
        .await
        .ok()?
        .ok()?;
    let q = query(7, name, RecordType::A, None);
    c.write_all(&framed(&q)).await.ok()?;
    let mut len = [0u8; 2];
    let buf = tokio::time::timeout(Duration::from_secs(2), async {
        tokio::io::AsyncReadExt::read_exact(&mut c, &mut len).await?;
        let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
        tokio::io::AsyncReadExt::read_exact(&mut c, &mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    })
    .await
    .ok()?
    .ok()?;
    Some(
        hickory_proto::op::Message::from_vec(&buf)
            .ok()?
            .metadata
            .response_code,
    )
}

/// The big pipelined TCP run inside a real memory cgroup (v1's memory controller, or v2)
/// limited to 64 MiB, the budget read from the cgroup (no `memory.limit`): no OOM kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_run_inside_a_64_mib_memory_cgroup_is_not_oom_killed() {
    const TEST: &str = "hostile_run_inside_a_64_mib_memory_cgroup_is_not_oom_killed";
    let _one = SERIAL.lock().await;
    let name = format!("dot-proxy-test-{}", std::process::id());
    let (dir, limit_file, events) =
        if std::path::Path::new("/sys/fs/cgroup/memory/cgroup.procs").exists() {
            let d = std::path::PathBuf::from("/sys/fs/cgroup/memory").join(&name);
            (
                d.clone(),
                d.join("memory.limit_in_bytes"),
                d.join("memory.oom_control"),
            )
        } else {
            let d = std::path::PathBuf::from("/sys/fs/cgroup").join(&name);
            (d.clone(), d.join("memory.max"), d.join("memory.events"))
        };
    if std::fs::create_dir(&dir).is_err()
        || std::fs::write(&limit_file, BUDGET.to_string()).is_err()
    {
        let _ = std::fs::remove_dir(&dir);
        crate::skip::skip(TEST, "cannot make a memory cgroup (not root?)");
        return;
    }
    // Swap would hide an over-limit process instead of killing it.
    let _ = std::fs::write(dir.join("memory.memsw.limit_in_bytes"), BUDGET.to_string());
    let _ = std::fs::write(dir.join("memory.swap.max"), "0");
    let up = Upstream::start().await;
    let join = format!("echo $$ > {}", dir.join("cgroup.procs").display());
    let mut p = start(&up, "", Some(&join)).await;
    let text = p.metrics().await;
    assert_eq!(
        metric_with(&text, "dot_proxy_memory_budget_bytes", "resource=\"total\""),
        BUDGET as f64,
        "the budget came from the cgroup: {text}"
    );
    big_pipelined_tcp(&mut p, &up, "cgroup").await;
    let ev = std::fs::read_to_string(&events).unwrap_or_default();
    let kills = ev
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    assert_eq!(kills, 0, "OOM kills in the cgroup: {ev}");
    drop(p);
    // The cgroup can be removed once the killed proxy has left it.
    within(Duration::from_secs(5), || async {
        std::fs::remove_dir(&dir).is_ok()
    })
    .await;
}
