//! `net.ipv4.tcp_migrate_req`: with it on, a connection that finished its handshake on a
//! listener that closes before accepting it (the old process of a SIGTERM handover) is
//! moved to another listener of the same `SO_REUSEPORT` group instead of being reset
//! (Linux 5.14+). It belongs to a network namespace; `node-local` runs in the host's, where
//! the proxies listen, so it sets it there when it can and says so when it cannot.

use std::path::{Path, PathBuf};

/// The sysctl, relative to the root of a procfs mount.
const TCP_MIGRATE_REQ: &str = "sys/net/ipv4/tcp_migrate_req";

/// What setting `net.ipv4.tcp_migrate_req=1` came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrateReq {
    /// It was 1 already.
    AlreadyOn,
    /// It was 0 and is 1 now.
    TurnedOn,
    /// The kernel has no such sysctl (before 5.14): nothing moves connections.
    Unsupported,
    /// It is 0 and could not be written (a read-only `/proc/sys`, as in an unprivileged
    /// container, or no CAP_NET_ADMIN in the namespace): the error.
    Denied(String),
}

impl MigrateReq {
    /// Whether connections are moved during a handover.
    pub fn is_on(&self) -> bool {
        matches!(self, MigrateReq::AlreadyOn | MigrateReq::TurnedOn)
    }

    /// One line for the log (and the test's failure message).
    pub fn describe(&self) -> String {
        match self {
            MigrateReq::AlreadyOn => "net.ipv4.tcp_migrate_req is 1".into(),
            MigrateReq::TurnedOn => "net.ipv4.tcp_migrate_req set to 1".into(),
            MigrateReq::Unsupported => "net.ipv4.tcp_migrate_req does not exist (Linux before 5.14): a TCP connection that completes its handshake as an old proxy stops can be reset".into(),
            MigrateReq::Denied(e) => format!("cannot set net.ipv4.tcp_migrate_req=1 ({e}): a TCP connection that completes its handshake as an old proxy stops can be reset; set it on the node (docs/upgrades.md)"),
        }
    }
}

/// Decides from what the sysctl file held and, if it was written, how that went. Pure.
/// `current`: the file's content, or `None` when it does not exist; `write`: the result
/// of writing "1", when a write was needed.
fn judge(current: Option<&str>, write: impl FnOnce() -> std::io::Result<()>) -> MigrateReq {
    match current.map(str::trim) {
        None => MigrateReq::Unsupported,
        Some("1") => MigrateReq::AlreadyOn,
        Some(_) => match write() {
            Ok(()) => MigrateReq::TurnedOn,
            Err(e) => MigrateReq::Denied(e.to_string()),
        },
    }
}

/// Sets `net.ipv4.tcp_migrate_req=1` through the procfs mounted at `proc` (`/proc` but in
/// tests), in the caller's network namespace.
pub fn ensure_tcp_migrate_req(proc: &Path) -> MigrateReq {
    let path: PathBuf = proc.join(TCP_MIGRATE_REQ);
    let current = match std::fs::read_to_string(&path) {
        Ok(s) => Some(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        // Unreadable: treat it as off, and let the write say why.
        Err(_) => Some(String::new()),
    };
    judge(current.as_deref(), || std::fs::write(&path, "1"))
}

/// `dot_proxy_tcp_migrate_req`: the sysctl as the serving process sees it (its own network
/// namespace: the host's with the chart), read at scrape time, so a node where a
/// handover can reset TCP connections shows 0. Absent on a kernel without it.
#[derive(Debug)]
pub struct MigrateReqCollector {
    /// Where procfs is mounted: `/proc` but in tests.
    pub proc: PathBuf,
}

impl Default for MigrateReqCollector {
    fn default() -> Self {
        MigrateReqCollector {
            proc: PathBuf::from(PROC),
        }
    }
}

/// Where procfs is mounted.
pub const PROC: &str = "/proc";

impl prometheus_client::collector::Collector for MigrateReqCollector {
    fn encode(
        &self,
        mut enc: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        let Ok(text) = std::fs::read_to_string(self.proc.join(TCP_MIGRATE_REQ)) else {
            return Ok(());
        };
        let g = prometheus_client::metrics::gauge::ConstGauge::new(i64::from(text.trim() == "1"));
        g.encode(enc.encode_descriptor(
            "tcp_migrate_req",
            "net.ipv4.tcp_migrate_req in the proxy's network namespace: 1 when a SIGTERM handover moves connections not yet accepted to the new process, 0 when they can be reset",
            None,
            g.metric_type(),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judged_from_the_file_and_the_write() {
        let never = || -> std::io::Result<()> { panic!("no write needed") };
        assert_eq!(judge(None, never), MigrateReq::Unsupported);
        assert_eq!(judge(Some("1\n"), never), MigrateReq::AlreadyOn);
        assert_eq!(judge(Some("0\n"), || Ok(())), MigrateReq::TurnedOn);
        let ro = judge(Some("0\n"), || {
            Err(std::io::Error::from_raw_os_error(30)) // EROFS
        });
        assert!(
            matches!(&ro, MigrateReq::Denied(e) if e.contains("Read-only")),
            "{ro:?}"
        );
        assert!(!ro.is_on());
        assert!(ro.describe().contains("set it on the node"));
        assert!(MigrateReq::TurnedOn.is_on() && MigrateReq::AlreadyOn.is_on());
    }

    #[test]
    fn the_gauge_follows_the_sysctl() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut r = prometheus_client::registry::Registry::with_prefix("dot_proxy");
        r.register_collector(Box::new(MigrateReqCollector {
            proc: dir.path().to_path_buf(),
        }));
        let scrape = || {
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, &r).expect("encode");
            out
        };
        // A kernel without the sysctl: no series.
        assert!(!scrape().contains("dot_proxy_tcp_migrate_req "));
        let file = dir.path().join(TCP_MIGRATE_REQ);
        std::fs::create_dir_all(file.parent().expect("parent")).expect("dirs");
        for (content, want) in [("0\n", 0), ("1\n", 1)] {
            std::fs::write(&file, content).expect("write");
            let out = scrape();
            assert!(
                out.contains(&format!("dot_proxy_tcp_migrate_req {want}\n")),
                "{out}"
            );
        }
    }

    #[test]
    fn sets_the_file_under_a_proc_root() {
        let dir = tempfile::tempdir().expect("tmp");
        assert_eq!(ensure_tcp_migrate_req(dir.path()), MigrateReq::Unsupported);
        let file = dir.path().join(TCP_MIGRATE_REQ);
        std::fs::create_dir_all(file.parent().expect("parent")).expect("dirs");
        std::fs::write(&file, "0\n").expect("write");
        assert_eq!(ensure_tcp_migrate_req(dir.path()), MigrateReq::TurnedOn);
        assert_eq!(std::fs::read_to_string(&file).expect("read"), "1");
        assert_eq!(ensure_tcp_migrate_req(dir.path()), MigrateReq::AlreadyOn);
    }
}
