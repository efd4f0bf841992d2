//! Runs a firewall tool (`nft`, `iptables-restore`, ...) with a time limit.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::FirewallError;

/// No firewall tool should take this long; one that does is holding a lock forever.
const TOOL_TIMEOUT: Duration = Duration::from_secs(15);

/// Runs `program args...`, feeding `stdin` when given, and returns its standard output.
/// A non-zero exit is an error carrying the tool's standard error.
pub async fn run(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, FirewallError> {
    tokio::time::timeout(TOOL_TIMEOUT, run_inner(program, args, stdin))
        .await
        .map_err(|_| FirewallError::Timeout {
            program: program.to_string(),
            after: TOOL_TIMEOUT,
        })?
}

async fn run_inner(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, FirewallError> {
    let spawn_err = |source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::NotFound {
            FirewallError::Missing {
                program: program.to_string(),
            }
        } else {
            FirewallError::Io {
                program: program.to_string(),
                source,
            }
        }
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(spawn_err)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .await
            .map_err(|source| FirewallError::Io {
                program: program.to_string(),
                source,
            })?;
        // Dropping the pipe closes it: the tool sees the end of its input.
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|source| FirewallError::Io {
            program: program.to_string(),
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(FirewallError::Failed {
            command: format!("{program} {}", args.join(" ")),
            status: out.status.code(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}
