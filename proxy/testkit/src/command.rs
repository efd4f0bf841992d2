//! Tools the tests run (`dnstap-read`, `musl-gcc`, `ip`...).

use std::process::{Command, Output};

/// Runs `cmd` to the end; fails unless it exits 0, showing what it wrote to stderr.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
