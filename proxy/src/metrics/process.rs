//! Process metrics (CPU, memory, file descriptors, threads), read from /proc when scraped.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Process CPU, memory, file descriptors and threads, read from /proc at scrape time.
#[derive(Debug)]
pub(super) struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(p) = read_proc() else { return Ok(()) };
        let cpu = ConstCounter::new(p.cpu_seconds);
        let (cpu_name, cpu_help) = ("process_cpu_seconds", "User and system CPU time spent");
        cpu.encode(enc.encode_descriptor(cpu_name, cpu_help, None, cpu.metric_type())?)?;
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size",
                p.rss_bytes,
            ),
            ("process_open_fds", "Open file descriptors", p.open_fds),
            ("process_threads", "OS threads", p.threads),
        ];
        for (name, help, value) in gauges {
            let g = ConstGauge::new(value as i64);
            g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        Ok(())
    }
}

struct ProcStats {
    cpu_seconds: f64,
    rss_bytes: u64,
    open_fds: u64,
    threads: u64,
}

fn read_proc() -> Option<ProcStats> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = 100.0; // USER_HZ is 100 on every Linux platform Prometheus' own client assumes.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    let threads: u64 = f.get(17)?.parse().ok()?;
    let rss_pages: u64 = f.get(21)?.parse().ok()?;
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    Some(ProcStats {
        cpu_seconds: (utime + stime) / ticks,
        rss_bytes: rss_pages * 4096,
        open_fds,
        threads,
    })
}
