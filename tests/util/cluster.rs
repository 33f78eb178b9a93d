//! Real processes for the scale-out tests: a `redis-server` of our own on a free loopback
//! port with append-only persistence in a temporary directory, and `kasuhara-guard serve`
//! nodes (the binary cargo built) pointed at it. Nothing here touches a Redis or a server
//! that the machine already runs.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kasuhara_guard::pb::alert_service_client::AlertServiceClient;
use kasuhara_guard::pb::screening_service_client::ScreeningServiceClient;
use tonic::transport::Channel;

/// How long a process may take to start answering: the node loads the lexicon and the
/// tokeniser dictionary first, which takes seconds on a busy machine.
const STARTUP: Duration = Duration::from_secs(60);
/// Between two readiness probes of a starting process.
const PROBE_INTERVAL: Duration = Duration::from_millis(50);

/// The redis-server binary: `REDIS_SERVER` if set, else the Debian package's path.
fn redis_server_binary() -> PathBuf {
    let path = std::env::var_os("REDIS_SERVER")
        .map_or_else(|| PathBuf::from("/usr/bin/redis-server"), PathBuf::from);
    assert!(
        path.exists(),
        "help: the scale-out tests need redis-server (Redis 7) at {}: install it with \
         `apt-get install redis-server` (Debian/Ubuntu) or set REDIS_SERVER to its path",
        path.display()
    );
    path
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    listener.local_addr().expect("local addr").port()
}

/// Waits until `probe` succeeds, or fails the test naming `what`.
async fn wait_until(what: &str, mut probe: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + STARTUP;
    while !probe().await {
        assert!(Instant::now() < deadline, "help: {what} did not start within {STARTUP:?}");
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

/// A redis-server of the test's own; killed on drop, its directory removed.
pub struct RedisProcess {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisProcess {
    /// Starts redis-server on a free port with a fresh directory, append-only on and
    /// `appendfsync always`, so that even a SIGKILL loses no acknowledged write.
    pub async fn start() -> RedisProcess {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("kg-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create redis dir");
        let mut redis = RedisProcess { port, dir, child: None };
        redis.spawn().await;
        redis
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let child = Command::new(redis_server_binary())
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--appendonly", "yes", "--appendfsync", "always", "--save", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        wait_until("redis-server", async || tokio::net::TcpStream::connect(addr).await.is_ok())
            .await;
    }

    /// Kills redis-server (SIGKILL: no chance to flush anything more).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and directory, so it reloads its append-only file.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `kasuhara-guard serve` process with `--redis`; killed on drop.
pub struct NodeProcess {
    pub addr: SocketAddr,
    /// Its Prometheus endpoint (`--metrics-addr`), so a test can see what this node did.
    pub metrics_addr: SocketAddr,
    child: Option<Child>,
}

impl NodeProcess {
    /// Starts a node on a free port (and its metrics on another) against `redis_url` and
    /// waits until it answers gRPC.
    pub async fn start(redis_url: &str) -> NodeProcess {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let metrics_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut command = Command::new(env!("CARGO_BIN_EXE_kasuhara-guard"));
        // The child gets a clean slate of our variables, whatever the developer's shell has.
        for (name, _) in std::env::vars() {
            if name.starts_with("KASUHARA_") {
                command.env_remove(name);
            }
        }
        let child = command
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["serve", "--addr", &addr.to_string()])
            .args(["--metrics-addr", &metrics_addr.to_string()])
            .args(["--redis", redis_url, "--log-filter", "warn"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn kasuhara-guard serve");
        let node = NodeProcess { addr, metrics_addr, child: Some(child) };
        let endpoint = node.endpoint();
        wait_until("kasuhara-guard serve", async || {
            use tonic_health::pb::HealthCheckRequest;
            use tonic_health::pb::health_client::HealthClient;
            let Ok(channel) = Channel::from_shared(endpoint.clone()).expect("uri").connect().await
            else {
                return false;
            };
            HealthClient::new(channel)
                .check(HealthCheckRequest { service: String::new() })
                .await
                .is_ok()
        })
        .await;
        node
    }

    /// Its gRPC endpoint, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its process id.
    ///
    /// # Panics
    /// After [`NodeProcess::kill`].
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the node was not killed").id()
    }

    /// One scrape of its Prometheus endpoint (the exposition text).
    pub async fn metrics(&self) -> String {
        let (status, body) = crate::util::http_get(self.metrics_addr, "/metrics").await;
        assert!(status.contains(" 200 "), "help: /metrics of {} answered {status}", self.addr);
        body
    }

    pub async fn screening(&self) -> ScreeningServiceClient<Channel> {
        ScreeningServiceClient::connect(self.endpoint()).await.expect("connect screening")
    }

    pub async fn alerts(&self) -> AlertServiceClient<Channel> {
        AlertServiceClient::connect(self.endpoint()).await.expect("connect alerts")
    }

    /// Kills the node (SIGKILL: a crash, not a drain).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
