use std::process::Command;

use kasuhara_guard::auth::{Role, TokenStore};
use kasuhara_guard::config::Config;
use kasuhara_guard::limits::Limits;
use kasuhara_guard::pb::alert_service_client::AlertServiceClient;
use kasuhara_guard::pb::screening_service_client::ScreeningServiceClient;
use kasuhara_guard::pb::{self};
use kasuhara_guard::server::{self, ServerError};
use tokio::net::TcpListener;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt;

use crate::util::{TestPki, Tokens, bearer, shipped_config, start_server};

fn text(tenant: &str, text: &str) -> pb::ScreenTextRequest {
    pb::ScreenTextRequest {
        tenant_id: tenant.into(),
        speaker: pb::Speaker::Customer.into(),
        text: text.into(),
        ..Default::default()
    }
}

fn with_tokens() -> (Config, Tokens) {
    let mut config = shipped_config();
    let tokens = Tokens::install(&mut config, &[("p", Role::Producer, &["acme"])]);
    (config, tokens)
}

/// With TLS, a client that trusts the CA screens over it; a plain-text client gets nowhere.
#[tokio::test]
async fn tls_serves_and_plain_text_is_refused() {
    let pki = TestPki::generate();
    let (mut config, tokens) = with_tokens();
    config.tls = Some(pki.server(false));
    let server = start_server(config).await;
    let channel = pki.connect(server.addr, false).await.expect("TLS handshake");
    let mut client = ScreeningServiceClient::new(channel);
    let response = client
        .screen_text(bearer(tokens.get("p"), text("acme", "おいてめえぶっ殺すぞ")))
        .await
        .expect("screened over TLS");
    assert!(!response.into_inner().alerts.is_empty(), "help: screening works over TLS");

    let plain = ScreeningServiceClient::connect(server.endpoint()).await;
    let refused = match plain {
        Err(_) => true,
        Ok(mut c) => c.screen_text(bearer(tokens.get("p"), text("acme", "x"))).await.is_err(),
    };
    assert!(refused, "help: a plain-text client must not reach a TLS server");
    server.stop().await.expect("clean stop");
}

/// With a client CA, a client without a certificate is refused at the handshake; one with a
/// certificate from that CA screens (and still needs its token).
#[tokio::test]
async fn mutual_tls_requires_a_client_certificate() {
    let pki = TestPki::generate();
    let (mut config, tokens) = with_tokens();
    config.tls = Some(pki.server(true));
    let server = start_server(config).await;

    let anonymous = match pki.connect(server.addr, false).await {
        Err(_) => true,
        Ok(channel) => ScreeningServiceClient::new(channel)
            .screen_text(bearer(tokens.get("p"), text("acme", "x")))
            .await
            .is_err(),
    };
    assert!(anonymous, "help: mTLS must refuse a client without a certificate");

    let channel = pki.connect(server.addr, true).await.expect("mutual TLS handshake");
    let mut client = ScreeningServiceClient::new(channel);
    client.screen_text(bearer(tokens.get("p"), text("acme", "こんにちは"))).await.expect("mTLS");
    let status = client.screen_text(text("acme", "こんにちは")).await.expect_err("no token");
    assert_eq!(status.code(), Code::Unauthenticated, "help: a certificate is not a token");
    server.stop().await.expect("clean stop");
}

/// No token and a wrong token are UNAUTHENTICATED; health stays open without one.
#[tokio::test]
async fn missing_or_wrong_token_is_unauthenticated() {
    let (config, tokens) = with_tokens();
    let server = start_server(config).await;
    let mut client = server.screening().await;
    for (request, what) in [
        (tonic::Request::new(text("acme", "x")), "no token"),
        (bearer("kg_0123", text("acme", "x")), "a wrong token"),
        (bearer(&format!("{}0", tokens.get("p")), text("acme", "x")), "a token one digit off"),
    ] {
        let status = client.screen_text(request).await.expect_err(what);
        assert_eq!(status.code(), Code::Unauthenticated, "help: {what}: {status:?}");
        assert!(!status.message().contains("kg_"), "help: never echo the token");
    }
    let mut bad_header = tonic::Request::new(text("acme", "x"));
    bad_header.metadata_mut().insert("authorization", "Basic abc".parse().expect("ascii"));
    let status = client.screen_text(bad_header).await.expect_err("not bearer");
    assert_eq!(status.code(), Code::Unauthenticated);

    let channel = tonic::transport::Endpoint::from_shared(server.endpoint())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect health");
    let mut health = HealthClient::new(channel);
    health.check(HealthCheckRequest::default()).await.expect("health needs no token");
    server.stop().await.expect("clean stop");
}

/// A non-loopback listener without authentication is a start-up error naming the fix.
#[tokio::test]
async fn exposed_listener_without_auth_does_not_start() {
    let listener = TcpListener::bind("0.0.0.0:0").await.expect("bind");
    let result = server::run(listener, shipped_config(), std::future::pending()).await;
    let Err(ServerError::Exposed(error)) = result else {
        panic!("help: expected a start-up refusal, got {result:?}");
    };
    assert!(error.to_string().contains("tokens_file"), "help: {error}");

    // The real binary: the same refusal, as a configuration error (exit 64).
    let out = Command::new(env!("CARGO_BIN_EXE_kasuhara-guard"))
        .args(["serve", "--addr", "0.0.0.0:0", "--metrics-addr", "off"])
        .env("KASUHARA_LEXICON_DIR", concat!(env!("CARGO_MANIFEST_DIR"), "/dictionaries"))
        .output()
        .expect("run kasuhara-guard");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "help: {stderr}");
    assert!(stderr.contains("[auth] tokens_file"), "help: the error names the fix: {stderr}");
}

/// `token new` prints a token and an entry that, appended to a tokens file, accepts it.
#[test]
fn token_new_mints_a_usable_entry() {
    let out = Command::new(env!("CARGO_BIN_EXE_kasuhara-guard"))
        .args(["token", "new", "--name", "ivr", "--role", "supervisor"])
        .args(["--tenant", "acme", "--tenant", "bank"])
        .output()
        .expect("run kasuhara-guard");
    assert!(out.status.success(), "help: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    let (token, entry) = stdout.split_once('\n').expect("token line, then the entry");
    let store = TokenStore::parse(entry).unwrap_or_else(|e| panic!("{e}\n{entry}"));
    let found = store.find(token).expect("the printed entry accepts the printed token");
    assert_eq!((found.name.as_str(), found.role), ("ivr", Role::Supervisor));
    assert!(!entry.contains(token), "help: the entry holds the hash, not the token");
}

/// The subscriber limit per tenant: one more is RESOURCE_EXHAUSTED with a field violation on
/// tenant_id; another tenant is unaffected.
#[tokio::test]
async fn subscribers_per_tenant_are_limited() {
    let config = Config {
        limits: Limits { max_subscribers_per_tenant: 2, ..Limits::default() },
        ..shipped_config()
    };
    let server = start_server(config).await;
    let mut alerts: AlertServiceClient<_> = server.alerts().await;
    let subscribe =
        |tenant: &str| pb::SubscribeRequest { tenant_id: tenant.into(), ..Default::default() };
    let _first = alerts.subscribe(subscribe("acme")).await.expect("first");
    let _second = alerts.subscribe(subscribe("acme")).await.expect("second");
    let status = alerts.subscribe(subscribe("acme")).await.expect_err("third is over the limit");
    assert_eq!(status.code(), Code::ResourceExhausted, "help: {status:?}");
    let details = status.get_error_details();
    let violation = &details.bad_request().expect("field violation").field_violations[0];
    assert_eq!(violation.field, "tenant_id");
    assert!(!status.message().contains("acme"), "help: messages name limits, not tenants");
    alerts.subscribe(subscribe("other")).await.expect("another tenant has its own slots");
    server.stop().await.expect("clean stop");
}

/// A message over `max_message_bytes` is refused by tonic's decoder (OUT_OF_RANGE) and the
/// connection keeps working for messages within the limit.
#[tokio::test]
async fn oversized_message_is_refused() {
    let config = Config {
        limits: Limits { max_message_bytes: 1024, ..Limits::default() },
        ..shipped_config()
    };
    let server = start_server(config).await;
    let mut client = server.screening().await;
    let status = client.screen_text(text("acme", &"あ".repeat(400))).await.expect_err("1.2 KB");
    assert_eq!(status.code(), Code::OutOfRange, "help: {status:?}");
    assert!(!status.message().contains('あ'), "help: no transcript text in errors");
    let response = client.screen_text(text("acme", "おいてめえぶっ殺すぞ")).await.expect("small");
    assert!(!response.into_inner().alerts.is_empty());
    server.stop().await.expect("clean stop");
}
