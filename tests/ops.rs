//! What operators and their tools see: Prometheus metrics, gRPC health and reflection, the
//! `health` and `config check` commands of the real binary.

use std::process::Command;
use std::time::Duration;

use kasuhara_guard::pb;
use kasuhara_guard::telemetry;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::util::{http_get, sample, shipped_config, start_server};

/// A gRPC channel to `endpoint`.
async fn channel(endpoint: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(endpoint.to_owned())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect")
}

/// Screening over gRPC moves the counters, gauges and histograms a scrape of /metrics shows.
/// Metrics are process-wide and other tests screen concurrently, so every check is "at least
/// what this test did".
#[tokio::test]
async fn metrics_count_what_was_screened() {
    let server = start_server(shipped_config()).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind metrics");
    let metrics_addr = listener.local_addr().expect("metrics addr");
    let stop = CancellationToken::new();
    let handle = telemetry::metrics_handle().expect("install the recorder");
    tokio::spawn(telemetry::serve_metrics(listener, handle, stop.clone()));

    let (status, before) = http_get(metrics_addr, "/metrics").await;
    assert!(status.contains("200"), "help: {status}");

    let mut client = server.screening().await;
    let text = |t: &str| pb::ScreenTextRequest {
        tenant_id: "ops".into(),
        channel: pb::Channel::Chat.into(),
        speaker: pb::Speaker::Customer.into(),
        text: t.into(),
    };
    let alerts = client.screen_text(text("土下座しろ")).await.expect("screen").into_inner().alerts;
    assert!(!alerts.is_empty(), "help: the lexicon should flag 土下座しろ");
    let refused =
        client.screen_text(pb::ScreenTextRequest { tenant_id: String::new(), ..text("x") });
    assert_eq!(refused.await.expect_err("no tenant").code(), tonic::Code::InvalidArgument);
    let conversation = vec![
        pb::ScreenRequest {
            kind: Some(pb::screen_request::Kind::Start(pb::ConversationStart {
                conversation_id: "metrics-1".into(),
                tenant_id: "ops".into(),
                ..Default::default()
            })),
        },
        pb::ScreenRequest {
            kind: Some(pb::screen_request::Kind::Segment(pb::Segment {
                seq: 1,
                speaker: pb::Speaker::Customer.into(),
                text: "おいてめえぶっ殺すぞ".into(),
                is_final: true,
                ..Default::default()
            })),
        },
        pb::ScreenRequest { kind: Some(pb::screen_request::Kind::End(pb::ConversationEnd {})) },
    ];
    let mut responses =
        client.screen(tokio_stream::iter(conversation)).await.expect("screen").into_inner();
    while responses.next().await.transpose().expect("response").is_some() {}

    let (_, after) = http_get(metrics_addr, "/metrics").await;
    let moved =
        |name: &str, labels: &[&str]| sample(&after, name, labels) - sample(&before, name, labels);
    let text_labels = &["speaker=\"customer\"", "kind=\"text\""];
    assert!(moved(telemetry::SEGMENTS_TOTAL, text_labels) >= 1.0, "help: {after}");
    let final_labels = &["speaker=\"customer\"", "kind=\"final\""];
    assert!(moved(telemetry::SEGMENTS_TOTAL, final_labels) >= 1.0, "help: {after}");
    assert!(moved(telemetry::ALERTS_TOTAL, &["category=\"DOGEZA\""]) >= 1.0, "help: {after}");
    let attack = &["category=\"ATTACK\"", "status=\"confirmed\""];
    assert!(moved(telemetry::ALERTS_TOTAL, attack) >= 1.0, "help: {after}");
    let invalid = &["grpc_status=\"InvalidArgument\""];
    assert!(moved(telemetry::REQUESTS_REJECTED_TOTAL, invalid) >= 1.0, "help: {after}");
    assert!(moved(telemetry::CONVERSATIONS_TOTAL, &[]) >= 1.0, "help: {after}");
    let ended = &["reason=\"end\""];
    assert!(moved(telemetry::CONVERSATIONS_ENDED_TOTAL, ended) >= 1.0, "help: {after}");
    for stage in ["normalize", "tokenize", "match"] {
        let label = format!("stage=\"{stage}\"");
        let count = format!("{}_count", telemetry::STAGE_SECONDS);
        assert!(moved(&count, &[&label]) >= 2.0, "help: stage {stage}: {after}");
    }
    let segment_count = format!("{}_count", telemetry::SEGMENT_SECONDS);
    assert!(moved(&segment_count, &[]) >= 2.0, "help: {after}");
    assert!(after.contains("# TYPE kasuhara_stage_duration_seconds histogram"), "help: {after}");
    assert!(sample(&after, telemetry::LEXICON_ENTRIES, &[]) > 100.0, "help: {after}");
    assert!(sample(&after, telemetry::LEXICON_LOADS_TOTAL, &["result=\"ok\""]) >= 1.0);
    // Bounded labels only: no tenant or conversation id, no transcript text.
    for private in ["ops", "metrics-1", "土下座", "殺"] {
        assert!(!after.contains(&format!("\"{private}")), "help: {private} leaked: {after}");
    }

    let (status, _) = http_get(metrics_addr, "/other").await;
    assert!(status.contains("404"), "help: {status}");
    stop.cancel();
    server.stop().await.expect("clean stop");
}

/// Health reports SERVING per service and for the server, and a watcher sees NOT_SERVING when
/// shutdown begins; the open watch does not hold shutdown past the grace period.
#[tokio::test]
async fn health_flips_to_not_serving_on_shutdown() {
    let mut config = shipped_config();
    config.shutdown_grace = Duration::from_secs(2);
    let server = start_server(config).await;
    let mut health = HealthClient::new(channel(&server.endpoint()).await);
    for service in ["", "kasuhara.v1.ScreeningService", "kasuhara.v1.AlertService"] {
        let status = health
            .check(HealthCheckRequest { service: service.into() })
            .await
            .expect("check")
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "help: service {service:?}");
    }
    let unknown = health.check(HealthCheckRequest { service: "nope.Service".into() }).await;
    assert_eq!(unknown.expect_err("unknown service").code(), tonic::Code::NotFound);

    let mut watch = health
        .watch(HealthCheckRequest { service: "kasuhara.v1.ScreeningService".into() })
        .await
        .expect("watch")
        .into_inner();
    let first = watch.next().await.expect("first status").expect("status");
    assert_eq!(first.status(), ServingStatus::Serving);
    let stopping = tokio::spawn(server.stop());
    let next = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("a status change promptly");
    match next {
        Some(Ok(change)) => assert_eq!(change.status(), ServingStatus::NotServing),
        other => panic!("expected NOT_SERVING, got {other:?}"),
    }
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("stops within the grace period")
        .expect("join")
        .expect("clean stop");
}

/// Reflection lists the services and serves their descriptors with the .proto comments, so
/// grpcurl-style tools can `list` and `describe` without the .proto files.
#[tokio::test]
async fn reflection_describes_the_api() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let server = start_server(shipped_config()).await;
    let mut reflection = ServerReflectionClient::new(channel(&server.endpoint()).await);
    let ask = |request: MessageRequest| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let requests = vec![
        ask(MessageRequest::ListServices(String::new())),
        ask(MessageRequest::FileContainingSymbol("kasuhara.v1.ScreeningService".into())),
    ];
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .expect("reflection")
        .into_inner();
    let listed = answers.next().await.expect("list answer").expect("list");
    let Some(MessageResponse::ListServicesResponse(list)) = listed.message_response else {
        panic!("unexpected answer {listed:?}");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for want in
        ["kasuhara.v1.ScreeningService", "kasuhara.v1.AlertService", "grpc.health.v1.Health"]
    {
        assert!(names.contains(&want), "help: {names:?}");
    }
    let described = answers.next().await.expect("file answer").expect("file");
    let Some(MessageResponse::FileDescriptorResponse(files)) = described.message_response else {
        panic!("unexpected answer {described:?}");
    };
    let file: prost_types::FileDescriptorProto =
        prost::Message::decode(files.file_descriptor_proto[0].as_slice()).expect("descriptor");
    assert_eq!(file.name(), "kasuhara/v1/screening.proto");
    let comments: Vec<&str> = file
        .source_code_info
        .iter()
        .flat_map(|info| &info.location)
        .filter_map(|l| l.leading_comments.as_deref())
        .collect();
    assert!(
        comments.iter().any(|c| c.contains("Screens one conversation as it happens")),
        "help: descriptors should carry the .proto comments"
    );
    server.stop().await.expect("clean stop");
}

fn binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kasuhara-guard"));
    // The child gets a clean slate of our variables, whatever the developer's shell has.
    for (name, _) in std::env::vars() {
        if name.starts_with("KASUHARA_") {
            command.env_remove(name);
        }
    }
    command.current_dir(env!("CARGO_MANIFEST_DIR"));
    command
}

/// `health` exits 0 and prints SERVING for a running server, and fails for a closed port.
#[tokio::test]
async fn health_command_checks_a_running_server() {
    let server = start_server(shipped_config()).await;
    let endpoint = server.endpoint();
    // The port accepts before the lexicon is loaded; wait for the server itself, so the
    // command's own timeout measures only the check.
    HealthClient::new(channel(&endpoint).await)
        .check(HealthCheckRequest { service: String::new() })
        .await
        .expect("the server starts");
    let output = tokio::task::spawn_blocking(move || {
        binary().args(["health", "--timeout", "20s", "--addr", &endpoint]).output().expect("run")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "help: {stdout} {}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(stdout.trim(), "server: SERVING");

    // A port that was just free: nothing listens there.
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind").local_addr().expect("addr");
    let output = tokio::task::spawn_blocking(move || {
        binary()
            .args(["health", "--timeout", "2s", "--addr", &format!("http://{closed}")])
            .output()
            .expect("run health")
    })
    .await
    .expect("join");
    assert!(!output.status.success(), "help: nothing listens on {closed}");
    server.stop().await.expect("clean stop");
}

/// `config check` prints the effective configuration with the file < env < flag order, and
/// refuses a bad file with exit status 64 and file:line.
#[test]
fn config_check_prints_the_effective_configuration() {
    let output = binary()
        .args(["config", "check", "examples/kasuhara-guard.toml", "--metrics-addr", "off"])
        .env("KASUHARA_ADDR", "127.0.0.1:50999")
        .env("KASUHARA_METRICS_ADDR", "127.0.0.1:9999")
        .env("KASUHARA_LOG_FORMAT", "json")
        .output()
        .expect("run config check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "help: {}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.starts_with("# ok: examples/kasuhara-guard.toml"), "help: {stdout}");
    assert!(stdout.contains("addr = \"127.0.0.1:50999\""), "help: env beats file: {stdout}");
    assert!(stdout.contains("metrics_addr = \"off\""), "help: flag beats env: {stdout}");
    assert!(stdout.contains("format = \"json\""), "help: {stdout}");
    assert!(stdout.contains("[policy.tenants.example-bank]"), "help: {stdout}");

    let dir = std::env::temp_dir().join(format!("kasuhara-ops-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[server]\naddr = \"127.0.0.1:1\"\n\n[limits]\nalert_buffer = 0\n")
        .expect("write");
    let output = binary().args(["config", "check"]).arg(&bad).output().expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "help: {stderr}");
    assert!(
        stderr.contains(&format!("{}:5: limits.alert_buffer", bad.display())),
        "help: {stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
