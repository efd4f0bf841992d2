//! Network namespaces for tests that need root (`ip netns add dotproxy-test-<pid>-<n>`),
//! deleted on drop, and processes started in them. Shared by the node-local and the
//! search-completion tests.
#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_dot-proxy");

/// A network namespace, deleted on drop (so also when an assertion fails).
pub struct Netns {
    pub name: String,
    pub dir: tempfile::TempDir,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

impl Netns {
    /// A fresh namespace with loopback up, or `None` (and a message) where this cannot run.
    pub fn create(test: &str) -> Option<Netns> {
        if effective_uid() != Some(0) {
            crate::skip::skip(
                test,
                "needs root to create a network namespace (run the tests as root, as CI does)",
            );
            return None;
        }
        let name = format!(
            "dotproxy-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        match Command::new("ip").args(["netns", "add", &name]).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                crate::skip::skip(
                    test,
                    &format!(
                        "`ip netns add` failed: {}",
                        String::from_utf8_lossy(&o.stderr).trim()
                    ),
                );
                return None;
            }
            Err(e) => {
                crate::skip::skip(test, &format!("cannot run `ip` (iproute2): {e}"));
                return None;
            }
        }
        let ns = Netns {
            name,
            dir: tempfile::tempdir().expect("tempdir"),
        };
        ns.ok(&["ip", "link", "set", "lo", "up"]);
        Some(ns)
    }

    pub fn exec(&self, cmd: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(cmd)
            .output()
            .expect("run ip netns exec")
    }

    /// Runs a command in the namespace and returns its output; panics when it fails.
    pub fn ok(&self, cmd: &[&str]) -> String {
        let mut ip = Command::new("ip");
        let out = dot_proxy_testkit::run_ok(ip.args(["netns", "exec", &self.name]).args(cmd));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn has(&self, tool: &str) -> bool {
        self.exec(&["sh", "-c", &format!("command -v {tool}")])
            .status
            .success()
    }

    /// Starts `dot-proxy ARGS` in the namespace; its output goes to `<dir>/<log>.log`.
    pub fn spawn(&self, log: &str, args: &[&str]) -> Proc {
        let path = self.dir.path().join(format!("{log}.log"));
        let file = File::create(&path).expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name, BIN])
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("dup log"))
            .stderr(file)
            .spawn()
            .expect("spawn dot-proxy");
        Proc {
            child: Some(child),
            log: path,
        }
    }

    /// Runs `f` on a thread that entered the namespace.
    pub fn within<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = self.path();
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
        .join()
        .expect("namespace thread")
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

pub fn enter(ns_path: &Path) {
    let f = File::open(ns_path).expect("open netns");
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
}

/// A child process, killed on drop; its log is shown when a check fails.
pub struct Proc {
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    /// SIGKILL, as the OOM killer sends.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    /// SIGTERM, then the exit status (within `limit`).
    pub fn term(&mut self, limit: Duration) -> Option<i32> {
        let pid = self.pid().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let mut c = self.child.take()?;
        let mut code = None;
        let exited = dot_proxy_testkit::within_blocking(limit, || match c.try_wait() {
            Ok(Some(st)) => {
                code = st.code();
                true
            }
            _ => false,
        });
        if !exited {
            let _ = c.kill();
            let _ = c.wait();
        }
        code
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Whether `cond` turns true within `limit` (the test kit's poll).
pub use dot_proxy_testkit::within_blocking as wait_until;
