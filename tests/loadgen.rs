use std::sync::Arc;
use std::time::Duration;

use kasuhara_guard::auth::Role;
use kasuhara_guard::config::Config;
use kasuhara_guard::limits::Limits;
use kasuhara_guard::loadgen::{self, LoadConfig, Mode};

use crate::util::{Tokens, shipped_config, start_server};

/// Customer lines, two of which alert, so the subscriber has alerts to time.
const LINES: &[&str] = &[
    "テレビが昨日から映らなくて困っているんですけど",
    "おいてめえぶっ殺すぞ",
    "今すぐ土下座して謝れよ",
    "請求書の金額が違うと思うので確認してもらえますか",
];

fn config(endpoint: String, mode: Mode) -> LoadConfig {
    LoadConfig {
        endpoints: vec![endpoint],
        subscribe_endpoint: None,
        conversations: 4,
        rate: 40.0,
        duration: Duration::from_millis(1500),
        mode,
        corpus: Arc::new(LINES.iter().map(|s| (*s).to_owned()).collect()),
        server_pids: vec![std::process::id()],
        progress: false,
        token: None,
        subscribe_token: None,
    }
}

/// A short paced run against a real server counts segments, verdicts and alerts, times them,
/// and reports them in the JSON shape ops script against.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_run_reports_counts_and_latencies() {
    let server = start_server(shipped_config()).await;
    let report = loadgen::run(config(server.endpoint(), Mode::Paced)).await.expect("load run");
    assert_eq!(report.errors, 0, "help: {report:?}");
    assert!(report.segments > 0 && report.segments_per_s > 0.0, "help: nothing sent: {report:?}");
    assert_eq!(report.verdicts, report.segments, "help: every segment gets a verdict");
    assert_eq!(report.verdict_latency_ms.count, report.verdicts);
    assert!(report.alerts > 0, "help: the threats must alert: {report:?}");
    assert!(report.alert_latency_ms.count > 0, "help: alerts must be matched to send times");
    assert_eq!(report.segments_per_node, [report.segments], "help: one node has all of it");
    assert_eq!(
        report.cross_node_alert_latency_ms.count, 0,
        "help: subscribed on the one node, no alert is cross-node: {report:?}"
    );
    let usage = report.server.expect("our own pid has /proc figures");
    assert!(usage.rss_loaded_bytes > 0);
    assert_eq!(report.servers.len(), 1, "help: one entry per pid");
    assert_eq!(report.servers[0].usage, Some(usage), "help: one process is the total as is");

    let json: serde_json::Value = serde_json::to_value(&report).expect("serialise");
    for key in ["verdict_latency_ms", "alert_latency_ms", "cross_node_alert_latency_ms"] {
        for quantile in ["p50", "p90", "p99", "p999", "max"] {
            assert!(json[key][quantile].is_f64(), "help: {key}.{quantile} missing in {json}");
        }
    }
    assert!(json["segments_per_s"].is_f64() && json["errors"].is_u64(), "help: {json}");
    assert_eq!(json["servers"][0]["pid"], std::process::id(), "help: {json}");
    assert!(json["servers"][0]["cpu_percent"].is_f64(), "help: figures sit beside the pid");
    server.stop().await.expect("clean stop");
}

/// Against a server with authentication on, the load runs with a producer token for its
/// streams and a supervisor token for its subscription; without a subscription token it is
/// refused, and without a producer token every conversation fails and is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_load_a_server_with_authentication_on() {
    let mut server_config = shipped_config();
    let tokens = Tokens::install(
        &mut server_config,
        &[
            ("lg-producer", Role::Producer, &["loadgen"]),
            ("lg-supervisor", Role::Supervisor, &["loadgen"]),
        ],
    );
    let server = start_server(server_config).await;
    let with = |token: Option<&str>, subscribe_token: Option<&str>| LoadConfig {
        token: token.map(str::to_owned),
        subscribe_token: subscribe_token.map(str::to_owned),
        ..config(server.endpoint(), Mode::Paced)
    };
    let (producer, supervisor) = (tokens.get("lg-producer"), tokens.get("lg-supervisor"));

    let report = loadgen::run(with(Some(producer), Some(supervisor))).await.expect("load run");
    assert_eq!(report.errors, 0, "help: {report:?}");
    assert!(report.verdicts > 0 && report.alerts > 0, "help: {report:?}");

    let refused = loadgen::run(with(None, None)).await.expect_err("no token");
    let loadgen::LoadError::Subscribe(status) = refused else { panic!("got {refused:?}") };
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "help: {status:?}");
    // The producer token alone cannot subscribe (it is used for both without --subscribe-token).
    let refused = loadgen::run(with(Some(producer), None)).await.expect_err("producer");
    let loadgen::LoadError::Subscribe(status) = refused else { panic!("got {refused:?}") };
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "help: {status:?}");

    let report = loadgen::run(with(None, Some(supervisor))).await.expect("subscribed");
    assert_eq!(report.errors, 4, "help: every conversation refused and counted: {report:?}");
    assert_eq!(report.verdicts, 0, "help: {report:?}");

    let bad = loadgen::run(with(Some("line\nbreak"), None)).await.expect_err("bad token");
    assert!(matches!(bad, loadgen::LoadError::Token), "help: got {bad:?}");
    server.stop().await.expect("clean stop");
}

/// A run without any endpoint is refused before anything starts.
#[tokio::test]
async fn no_endpoint_is_refused() {
    let empty = LoadConfig { endpoints: Vec::new(), ..config(String::new(), Mode::Paced) };
    let error = loadgen::run(empty).await.expect_err("no endpoint");
    assert!(matches!(error, loadgen::LoadError::NoEndpoints), "help: got {error:?}");
}

/// Saturation keeps one segment in flight per conversation and idle holds the streams open;
/// both count what they did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saturation_and_idle_runs_count() {
    // A closed loop over four conversations outruns the per-conversation flood limit, which
    // is not what this test is about.
    let limits = Limits { max_segments_per_second: 1_000_000, ..Limits::default() };
    let server = start_server(Config { limits, ..shipped_config() }).await;
    let saturated =
        loadgen::run(config(server.endpoint(), Mode::Saturation)).await.expect("saturation");
    assert_eq!(saturated.errors, 0, "help: {saturated:?}");
    assert_eq!(saturated.verdicts, saturated.segments);
    assert!(saturated.segments > 4, "help: a closed loop sends more than one each");

    let idle = loadgen::run(config(server.endpoint(), Mode::Idle)).await.expect("idle");
    assert_eq!(idle.errors, 0, "help: {idle:?}");
    assert_eq!(idle.segments, 4, "help: an idle conversation sends exactly one segment");
    assert_eq!(idle.verdicts, 4);
    server.stop().await.expect("clean stop");
}
