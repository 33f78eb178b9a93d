//! Test harness: a real server on an ephemeral loopback port, and real tonic clients.

use std::net::SocketAddr;
use std::path::PathBuf;

use kasuhara_guard::auth::{self, Role};
use kasuhara_guard::config::Config;
use kasuhara_guard::pb::alert_service_client::AlertServiceClient;
use kasuhara_guard::pb::screening_service_client::ScreeningServiceClient;
use kasuhara_guard::server::{self, ServerError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::Request;
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

/// Tokens minted for a test, by name, and the config that accepts them.
pub struct Tokens {
    by_name: std::collections::HashMap<String, String>,
}

impl Tokens {
    /// Mints one token per `(name, role, tenants)` and turns authentication on in `config`.
    pub fn install(config: &mut Config, specs: &[(&str, Role, &[&str])]) -> Tokens {
        let mut toml = String::new();
        let mut by_name = std::collections::HashMap::new();
        for (name, role, tenants) in specs {
            let token = auth::mint_token().expect("random source");
            let tenants: Vec<String> = tenants.iter().map(|t| t.to_string()).collect();
            toml.push_str(&auth::token_entry_toml(name, &token, *role, &tenants));
            by_name.insert(name.to_string(), token);
        }
        // Through the file format, so what ops write is what tests use.
        let store = auth::TokenStore::parse(&toml).expect("minted entries parse");
        config.access = auth::Access::tokens(store);
        Tokens { by_name }
    }

    /// The secret of the token named `name`.
    pub fn get(&self, name: &str) -> &str {
        self.by_name.get(name).map(String::as_str).expect("a token minted by this test")
    }
}

/// `message` with an `authorization: Bearer` header.
pub fn bearer<T>(token: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    let value = auth::bearer_header(token).expect("a token is ASCII");
    request.metadata_mut().insert("authorization", value);
    request
}

/// A throwaway PKI made at test time: a CA, a server certificate for `localhost` and
/// 127.0.0.1, and a client certificate, all PEM.
pub struct TestPki {
    pub ca: String,
    pub server_cert: String,
    pub server_key: String,
    pub client_cert: String,
    pub client_key: String,
}

impl TestPki {
    pub fn generate() -> TestPki {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "kasuhara test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("ca key"))
            .expect("self-signed CA");
        let leaf = |names: Vec<String>, purpose| {
            let key = KeyPair::generate().expect("leaf key");
            let mut params = CertificateParams::new(names).expect("leaf params");
            params.extended_key_usages = vec![purpose];
            let cert = params.signed_by(&key, &ca).expect("signed by the CA");
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(
            vec!["localhost".into(), "127.0.0.1".into()],
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) =
            leaf(vec!["producer.test".into()], rcgen::ExtendedKeyUsagePurpose::ClientAuth);
        TestPki { ca: ca.pem(), server_cert, server_key, client_cert, client_key }
    }

    /// The server side, with client certificates required when `mutual`.
    pub fn server(&self, mutual: bool) -> auth::TlsPem {
        auth::TlsPem {
            cert: self.server_cert.clone().into_bytes(),
            key: self.server_key.clone().into_bytes(),
            client_ca: mutual.then(|| self.ca.clone().into_bytes()),
        }
    }

    /// A TLS channel to `addr` that trusts the test CA, presenting the client certificate
    /// when `with_client_cert`.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        with_client_cert: bool,
    ) -> Result<Channel, tonic::transport::Error> {
        use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .domain_name("localhost");
        if with_client_cert {
            tls = tls.identity(Identity::from_pem(&self.client_cert, &self.client_key));
        }
        Endpoint::from_shared(format!("https://{addr}"))?.tls_config(tls)?.connect().await
    }
}

/// One plain HTTP/1.1 GET; returns the status line and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect to the metrics endpoint");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read response");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    (head.lines().next().unwrap_or_default().to_owned(), body.to_owned())
}

/// The sum of every sample of `name` whose labels include all of `labels` (`k="v"` pairs).
pub fn sample(exposition: &str, name: &str, labels: &[&str]) -> f64 {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter(|(series, _)| {
            let metric = series.split('{').next().unwrap_or_default();
            metric == name && labels.iter().all(|label| series.contains(label))
        })
        .map(|(_, value)| value.parse::<f64>().expect("a sample value"))
        .sum()
}
