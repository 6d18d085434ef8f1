//! A real `tally start` process on a free loopback port, killed when dropped, and a small HTTP
//! client for the tests. Every wait is bounded.

#![allow(dead_code)]

pub mod cluster;

use std::fs::File;
use std::net::TcpListener;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use serde_json::Value;

/// How long a server may take to answer `/healthz` after it was spawned.
pub const START_TIMEOUT_MS: u64 = 30_000;
/// How long a server may take to exit after SIGTERM.
pub const STOP_TIMEOUT_MS: u64 = 20_000;
const POLL_INTERVAL_MS: u64 = 50;

pub fn tally_binary() -> &'static str {
    env!("CARGO_BIN_EXE_tally")
}

/// Ports handed out by `free_port`: below Linux's default ephemeral range (32768–60999).
const PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A loopback port free now, outside the range the kernel picks outgoing connections' ports
/// from: a node killed and restarted on its ports must find them free, and a port taken from
/// the ephemeral range (binding port 0) could meanwhile become the source port of any
/// connection (it happened: "peer listener on 127.0.0.1:39501: Address already in use" on a
/// restart in `leader_killed_ten_times_under_load_loses_nothing`). Each test process starts
/// at its own offset and counts up, so concurrent tests and processes do not share ports.
pub fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let span = u32::from(PORTS.end - PORTS.start);
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let offset = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = PORTS.start + ((start + offset) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {PORTS:?}");
}

pub struct Server {
    child: Option<Child>,
    pub port: u16,
    pub base: String,
    pub data_dir: PathBuf,
    log_path: PathBuf,
    token: Option<String>,
    /// More `tally start` arguments, given at every start.
    args: Vec<String>,
    agent: ureq::Agent,
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

impl Server {
    /// Starts a server on `data_dir` and waits until it is healthy.
    pub fn start(data_dir: &Path, token: Option<&str>) -> Server {
        Server::start_with(data_dir, token, &[])
    }

    /// `start`, with more `tally start` arguments (given again at each restart).
    pub fn start_with(data_dir: &Path, token: Option<&str>, args: &[&str]) -> Server {
        let port = free_port();
        let log_path = data_dir.with_extension(format!("{port}.log"));
        let mut server = Server {
            child: None,
            port,
            base: format!("http://127.0.0.1:{port}"),
            data_dir: data_dir.to_owned(),
            log_path,
            token: token.map(str::to_owned),
            args: args.iter().map(|arg| (*arg).to_owned()).collect(),
            agent: agent(),
        };
        server.spawn();
        server
    }

    /// Starts the process again on the same data directory and port.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the server before restarting it");
        self.spawn();
    }

    fn spawn(&mut self) {
        let log = File::create(&self.log_path).expect("create the server log");
        let mut command = Command::new(tally_binary());
        command
            .arg("start")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--http")
            .arg(format!("127.0.0.1:{}", self.port))
            .env_remove("TALLY_API_TOKEN")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        if let Some(token) = &self.token {
            command.arg("--api-token").arg(token);
        }
        command.args(&self.args);
        self.child = Some(command.spawn().expect("spawn tally start"));
        self.wait_healthy();
    }

    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_millis(START_TIMEOUT_MS);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|child| child.try_wait().expect("try_wait"))
            {
                panic!(
                    "tally start exited with {status} before it was healthy:\n{}",
                    self.log()
                );
            }
            if let Ok(response) = self.agent.get(format!("{}/healthz", self.base)).call() {
                if response.status() == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "tally start not healthy after {START_TIMEOUT_MS} ms:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server running").id()
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill_9(&mut self) {
        let mut child = self.child.take().expect("server running");
        child.kill().expect("kill -9");
        child.wait().expect("reap");
    }

    /// SIGTERM, then waits (bounded) for a clean exit; returns whether it exited successfully.
    pub fn terminate(&mut self) -> bool {
        let mut child = self.child.take().expect("server running");
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_millis(STOP_TIMEOUT_MS);
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "tally did not exit within {STOP_TIMEOUT_MS} ms of SIGTERM:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
        }
    }

    fn authorize<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(token) => request.header("Authorization", format!("Bearer {token}")),
            None => request,
        }
    }

    /// GET → (status, JSON body or Null).
    pub fn get(&self, path: &str) -> (u16, Value) {
        let request = self.authorize(self.agent.get(format!("{}{path}", self.base)));
        let (status, body) = read(request.call());
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    pub fn get_text(&self, path: &str) -> (u16, String) {
        let request = self.authorize(self.agent.get(format!("{}{path}", self.base)));
        let (status, body) = read(request.call());
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// POST a body with a content type → (status, raw body).
    pub fn post_raw(&self, path: &str, content_type: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let request = self.authorize(
            self.agent
                .post(format!("{}{path}", self.base))
                .header("Content-Type", content_type),
        );
        read(request.send(body))
    }

    pub fn post_json(&self, path: &str, body: &str) -> (u16, Value) {
        let (status, body) = self.post_raw(path, "application/json", body.as_bytes());
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    /// The statuses of a successful create request, in order.
    pub fn create(&self, path: &str, body: &Value) -> Vec<String> {
        let (status, answer) = self.post_json(path, &body.to_string());
        assert_eq!(status, 200, "POST {path} {body}: {answer}");
        answer
            .as_array()
            .expect("an array of results")
            .iter()
            .map(|result| result["status"].as_str().expect("status").to_owned())
            .collect()
    }

    pub fn digest(&self) -> String {
        let (status, body) = self.get("/v1/status");
        assert_eq!(status, 200, "{body}");
        body["ledger"]["digest"]
            .as_str()
            .expect("digest")
            .to_owned()
    }
}

fn read(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, Vec<u8>) {
    let mut response = response.expect("HTTP request");
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_vec()
        .expect("read body");
    (status, body)
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A u128 from a JSON decimal string.
pub fn u128_of(value: &Value) -> u128 {
    value
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {value}"))
        .parse()
        .expect("decimal u128")
}
