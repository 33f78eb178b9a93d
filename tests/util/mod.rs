//! Test harness: a real server on an ephemeral loopback port, and real tonic clients.

use std::net::SocketAddr;
use std::path::PathBuf;

use kasuhara_guard::config::Config;
use kasuhara_guard::pb::alert_service_client::AlertServiceClient;
use kasuhara_guard::pb::screening_service_client::ScreeningServiceClient;
use kasuhara_guard::server::{self, ServerError};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

pub mod cluster;

/// A running server; `stop` shuts it down the way a signal would.
pub struct TestServer {
    pub addr: SocketAddr,
    /// The supervisor console's address, when started with one.
    pub console: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<Result<(), ServerError>>,
}

/// The repo's shipped lexicon, so tests screen with what users get.
pub fn shipped_config() -> Config {
    Config {
        lexicon_dir: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("dictionaries"),
        ..Config::default()
    }
}

/// Binds 127.0.0.1:0 before spawning, so the port is known and no sleep is needed.
pub async fn start_server(config: Config) -> TestServer {
    start(config, false).await
}

/// Like [`start_server`], with the supervisor console on a second loopback port.
pub async fn start_server_with_console(config: Config) -> TestServer {
    start(config, true).await
}

async fn start(config: Config, with_console: bool) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let console = match with_console {
        true => Some(TcpListener::bind("127.0.0.1:0").await.expect("bind console loopback")),
        false => None,
    };
    let console_addr = console.as_ref().map(|c| c.local_addr().expect("console addr"));
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(server::run_with_console(listener, console, config, async {
        let _ = stopped.await;
    }));
    TestServer { addr, console: console_addr, stop: Some(stop), handle }
}

impl TestServer {
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn screening(&self) -> ScreeningServiceClient<Channel> {
        ScreeningServiceClient::connect(self.endpoint()).await.expect("connect screening")
    }

    pub async fn alerts(&self) -> AlertServiceClient<Channel> {
        AlertServiceClient::connect(self.endpoint()).await.expect("connect alerts")
    }

    /// Signals shutdown and waits for the server to return.
    pub async fn stop(mut self) -> Result<(), ServerError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.handle).await.expect("server task panicked")
    }
}
