//! A `tally start` child process on a temporary data directory and a free loopback port, shared
//! by the benchmarks that start their own server (`server`, `compare`, `memory`).

use std::fs::File;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;

/// How long the server may take to become healthy. A fresh node touches the memory of its
/// whole capacity before it answers (docs/design.md §2): `compare`'s room for 64 Mi transfers is
/// about 10 GB, and on this virtual machine a first touch costs 3.3 s per GB or more, so 30 s
/// was sometimes too short (session 19: `the server was not healthy within 30000 ms`).
const START_TIMEOUT_MS: u64 = 120_000;
/// How long a stopping server may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT_MS: u64 = 10_000;

/// The `tally` binary next to this benchmark's own executable (the same target directory); when
/// it is missing, `cargo build --release --bin tally` is run first.
pub(crate) fn locate_tally() -> anyhow::Result<PathBuf> {
    let candidate = std::env::current_exe()?
        .parent()
        .context("the benchmark executable has no directory")?
        .join("tally");
    if !candidate.exists() {
        eprintln!("building the server: cargo build --release --bin tally");
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--release", "--bin", "tally"])
            .status()
            .context("running cargo build")?;
        anyhow::ensure!(status.success(), "cargo build --release --bin tally failed");
    }
    anyhow::ensure!(
        candidate.exists(),
        "no tally binary at {}; pass --tally PATH",
        candidate.display()
    );
    Ok(candidate)
}

/// A running `tally start`; killed on drop.
pub(crate) struct ServerProcess {
    child: Option<Child>,
    /// `host:port` of its HTTP listener.
    pub(crate) address: String,
}

/// Ledger capacity for the nodes the benchmarks start, reserved up front the way a production
/// node is configured (`tally start --accounts-max N --transfers-max N`), so the business-logic
/// thread never stops mid-run to grow its tables. `TALLY_ACCOUNTS_MAX`/`TALLY_TRANSFERS_MAX` set
/// in the benchmark's own environment win (the child inherits them); set both to measure other
/// sizes.
pub(crate) fn capacity_env(transfers_max: u64) -> Vec<(&'static str, String)> {
    let configured = std::env::var_os("TALLY_ACCOUNTS_MAX").is_some()
        || std::env::var_os("TALLY_TRANSFERS_MAX").is_some();
    if configured {
        return Vec::new();
    }
    vec![
        ("TALLY_ACCOUNTS_MAX", BENCH_ACCOUNTS_MAX.to_string()),
        ("TALLY_TRANSFERS_MAX", transfers_max.to_string()),
    ]
}

pub(crate) const BENCH_ACCOUNTS_MAX: u64 = 1 << 20;
/// A single node: 10 s phases at up to ~6.7M transfers/s fit. At half that capacity (32 Mi),
/// session 15's closed loop over 8 connections, at 4.0–4.4M/s, ran out of room after 8 s and
/// `compare` counted the refused seconds against it. The node faults its reserved tables in
/// when it starts: about 10 GiB resident before the first transfer (5 GiB at 32 Mi).
pub(crate) const SERVER_TRANSFERS_MAX: u64 = 64 << 20;

impl ServerProcess {
    /// A node with its ledger capacity reserved (see [`capacity_env`]).
    pub(crate) fn start(tally: &Path, directory: &Path) -> anyhow::Result<ServerProcess> {
        ServerProcess::start_with(tally, directory, capacity_env(SERVER_TRANSFERS_MAX))
    }

    /// A node with `environment` added; an empty one leaves the ledger growing on demand (what
    /// the memory benchmark measures).
    pub(crate) fn start_with(
        tally: &Path,
        directory: &Path,
        environment: Vec<(&'static str, String)>,
    ) -> anyhow::Result<ServerProcess> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let address = format!("127.0.0.1:{port}");
        let log = File::create(directory.join("server.log"))?;
        let child = Command::new(tally)
            .arg("start")
            .arg("--data-dir")
            .arg(directory.join("data"))
            .arg("--http")
            .arg(&address)
            .env("RUST_LOG", "warn")
            .envs(environment)
            .env_remove("TALLY_API_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("starting {}", tally.display()))?;
        let mut server = ServerProcess {
            child: Some(child),
            address,
        };
        server.wait_healthy(directory)?;
        Ok(server)
    }

    fn wait_healthy(&mut self, directory: &Path) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_millis(START_TIMEOUT_MS);
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten())
            {
                let log = std::fs::read_to_string(directory.join("server.log")).unwrap_or_default();
                anyhow::bail!("the server exited with {status}:\n{log}");
            }
            if healthz(&self.address) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        anyhow::bail!("the server was not healthy within {START_TIMEOUT_MS} ms")
    }

    /// VmHWM: the server's peak resident set so far.
    pub(crate) fn peak_rss_bytes(&self) -> anyhow::Result<u64> {
        self.status_bytes("VmHWM:")
    }

    /// VmRSS: the server's resident set now.
    pub(crate) fn rss_bytes(&self) -> anyhow::Result<u64> {
        self.status_bytes("VmRSS:")
    }

    fn status_bytes(&self, field: &str) -> anyhow::Result<u64> {
        let pid = self.child.as_ref().context("server not running")?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        parse_status_kilobytes(&status, field)
            .with_context(|| format!("no {field} in /proc/{pid}/status"))
            .map(|kilobytes| kilobytes * 1024)
    }

    /// SIGTERM, then kill after `STOP_TIMEOUT_MS`.
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_millis(STOP_TIMEOUT_MS);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A `/proc/PID/status` line such as `VmHWM:   123456 kB`, in kilobytes.
fn parse_status_kilobytes(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with(field))?;
    line.trim_start_matches(field)
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Whether `GET /healthz` answers 200 (blocking, one short connection).
pub(crate) fn healthz(address: &str) -> bool {
    use std::io::Read;
    use std::io::Write;
    let Ok(mut stream) = std::net::TcpStream::connect(address) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200")
}

#[cfg(test)]
mod tests {
    use super::parse_status_kilobytes;

    #[test]
    fn status_fields_are_read_in_kilobytes() {
        let status = "Name:\ttally\nVmHWM:\t  204800 kB\nVmRSS:\t   1024 kB\n";
        assert_eq!(parse_status_kilobytes(status, "VmHWM:"), Some(204_800));
        assert_eq!(parse_status_kilobytes(status, "VmRSS:"), Some(1024));
        assert_eq!(parse_status_kilobytes(status, "VmSwap:"), None);
    }
}
