//! Measures the resident memory of the answer cache filled with distinct names:
//! `cargo run --release -p dot-proxy --example cache_memory -- NAMES [MAX_BYTES [MAX_ENTRIES]]`
//! (defaults: 1000000, 512 MiB, NAMES).

use dot_proxy::cache::{Cache, CacheKey};

/// The same allocator as the proxy binary, so the figure is the proxy's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use dot_proxy::config::CacheConfig;
use dot_proxy::dns::message::{Answer, TtlPolicy};
use dot_proxy::dns::wire::parse_query;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let max_bytes: u64 = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(512 << 20);
    let max_entries: usize = std::env::args()
        .nth(3)
        .and_then(|a| a.parse().ok())
        .unwrap_or(n);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let cfg = CacheConfig {
            max_entries,
            max_bytes,
            ..Default::default()
        };
        let before = rss_kib();
        let cache = Cache::new(&cfg, &Default::default());
        let after_new = rss_kib();
        let now = tokio::time::Instant::now();
        for i in 0..n {
            let name = format!("n{i:07}.bench");
            let mut q = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
            for l in name.split('.') {
                q.push(l.len() as u8);
                q.extend_from_slice(l.as_bytes());
            }
            q.extend_from_slice(&[0, 0, 1, 0, 1]);
            let qi = parse_query(&q).expect("query");
            let mut r = q.clone();
            r[2] |= 0x80;
            r[7] = 1;
            r.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 1, 44, 0, 4, 192, 0, 2, 1]);
            let a = Answer::from_upstream(&r, &q, &qi, &TtlPolicy::default()).expect("answer");
            let key = CacheKey::new(&q, &qi, 0);
            cache.insert(key.as_bytes(), &a, now);
        }
        let full = rss_kib();
        println!(
            "entries {} (asked {n}), weight {} bytes, RSS before {before} KiB, empty cache {after_new} KiB, full {full} KiB: {:.0} bytes a name",
            cache.len(),
            cache.weight(),
            (full.saturating_sub(after_new) * 1024) as f64 / cache.len().max(1) as f64
        );
    });
}
