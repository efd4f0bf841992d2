//! The node-local process's heartbeat, read by its container's probes.
//!
//! The watch loop writes `<unix ms> <0|1>` to the status file on every tick: the time, and
//! whether setup has settled (the interface is up and the NOTRACK rules reflect the
//! probes). `dot-proxy node-local --check live` fails when the heartbeat is older than
//! `--max-age` (the loop is stuck, for example on the xtables lock, as happened to
//! NodeLocal DNSCache: kubernetes/dns#394, #453), and `--check ready` also when setup has
//! not settled.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What a probe checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Check {
    /// The watch loop ran within `--max-age`.
    Live,
    /// Live, and setup has settled.
    Ready,
}

/// Writes the heartbeat (nothing without a path).
#[derive(Debug)]
pub struct StatusFile {
    path: Option<PathBuf>,
    warned: bool,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl StatusFile {
    pub fn new(path: Option<PathBuf>) -> StatusFile {
        StatusFile {
            path,
            warned: false,
        }
    }

    /// Records one turn of the loop. Written to a temporary file and renamed, so a probe
    /// never reads half a line. A failure is logged once; the loop goes on.
    pub fn beat(&mut self, settled: bool) {
        let Some(path) = &self.path else { return };
        let tmp = path.with_extension("tmp");
        let line = format!("{} {}\n", now_ms(), u8::from(settled));
        let r = std::fs::write(&tmp, line).and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = r {
            if !self.warned {
                self.warned = true;
                tracing::warn!(error = %e, path = %path.display(), "cannot write the status file; the container's probes will fail");
            }
        }
    }
}

/// Judges a status line at `now_ms`.
pub fn evaluate(line: &str, now_ms: u64, max_age: Duration, check: Check) -> Result<(), String> {
    let mut parts = line.split_whitespace();
    let (Some(at), Some(settled)) = (
        parts.next().and_then(|t| t.parse::<u64>().ok()),
        parts.next(),
    ) else {
        return Err(format!("unreadable status {line:?}"));
    };
    let age = Duration::from_millis(now_ms.saturating_sub(at));
    if age > max_age {
        return Err(format!(
            "the watch loop last ran {:.1} s ago (more than {:.1} s): stuck",
            age.as_secs_f64(),
            max_age.as_secs_f64()
        ));
    }
    if check == Check::Ready && settled != "1" {
        return Err("setup has not settled yet (interface, NOTRACK rules)".into());
    }
    Ok(())
}

/// `dot-proxy node-local --check`: reads the status file and judges it now.
pub fn check(path: &Path, max_age: Duration, check: Check) -> Result<(), String> {
    let line = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e} (not started yet?)", path.display()))?;
    evaluate(&line, now_ms(), max_age, check)
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGE: Duration = Duration::from_secs(30);

    #[test]
    fn live_while_the_loop_beats_ready_once_settled() {
        assert!(evaluate("1000 0", 2_000, AGE, Check::Live).is_ok());
        assert!(evaluate("1000 0", 2_000, AGE, Check::Ready).is_err());
        assert!(evaluate("1000 1", 2_000, AGE, Check::Ready).is_ok());
        // Stuck: the last beat is older than the limit.
        let e = evaluate("1000 1", 1000 + 31_000, AGE, Check::Live).expect_err("stuck");
        assert!(e.contains("stuck"), "{e}");
        assert!(evaluate("1000 1", 1000 + 31_000, AGE, Check::Ready).is_err());
        // A clock step backwards is not an error.
        assert!(evaluate("5000 1", 1000, AGE, Check::Ready).is_ok());
        for bad in ["", "x 1", "1000"] {
            assert!(evaluate(bad, 2_000, AGE, Check::Live).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_file_round_trips() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("status");
        assert!(check(&path, AGE, Check::Live).is_err(), "missing file");
        let mut s = StatusFile::new(Some(path.clone()));
        s.beat(false);
        assert!(check(&path, AGE, Check::Live).is_ok());
        assert!(check(&path, AGE, Check::Ready).is_err());
        s.beat(true);
        assert!(check(&path, AGE, Check::Ready).is_ok());
        // Nothing written without a path, and no panic on an unwritable one.
        StatusFile::new(None).beat(true);
        StatusFile::new(Some(dir.path().join("no/such/dir/status"))).beat(true);
    }
}
