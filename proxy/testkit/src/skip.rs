//! Tests that need a tool, root or IPv6: skipped with a message on a developer's machine,
//! failed in CI (`CI` set and not empty), so a green CI always means they ran.

/// Whether this run is CI's.
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Skips the calling test with `reason` (the caller returns), or fails it in CI.
pub fn skip(test: &str, reason: &str) {
    assert!(
        !in_ci(),
        "{test}: {reason}; CI must run every test (.ci/run installs the tools)"
    );
    eprintln!("SKIPPED {test}: {reason}");
}
