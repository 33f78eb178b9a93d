//! The evidence log end to end: a real server appends an alert and its acknowledgement to a
//! hash-chained file; the real binary's `audit verify` passes it, `audit export` writes the
//! incident report, and a tampered copy fails naming the line. Tamper kinds one by one are
//! unit tests in src/evidence.rs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kasuhara_guard::evidence::{EvidenceLogConfig, FsyncPolicy};
use kasuhara_guard::pb;

use crate::util::{shipped_config, start_server};

fn audit(args: &[&str], file: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kasuhara-guard"))
        .arg("audit")
        .args(args)
        .arg(file)
        .env_remove("KASUHARA_CONFIG")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run kasuhara-guard audit")
}

/// Waits until the writer thread has appended `n` lines.
async fn wait_for_lines(path: &Path, n: usize) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().count() >= n {
            return text;
        }
        assert!(tokio::time::Instant::now() < deadline, "help: {n} records never written: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Streams one conversation with a threat and a phone number; the alert's id.
async fn screen_conversation(server: &crate::util::TestServer, id: &str) -> String {
    let mut screening = server.screening().await;
    let start = pb::ConversationStart {
        conversation_id: id.into(),
        tenant_id: "acme".into(),
        channel: pb::Channel::Voice.into(),
        agent_id: "agent-7".into(),
        ..Default::default()
    };
    let segment = pb::Segment {
        seq: 1,
        speaker: pb::Speaker::Customer.into(),
        text: "おいてめえぶっ殺すぞ、090-1234-5678に電話しろ".into(),
        is_final: true,
        start_ms: 0,
        end_ms: 2000,
    };
    let requests = vec![
        pb::ScreenRequest { kind: Some(pb::screen_request::Kind::Start(start)) },
        pb::ScreenRequest { kind: Some(pb::screen_request::Kind::Segment(segment)) },
        pb::ScreenRequest {
            kind: Some(pb::screen_request::Kind::End(pb::ConversationEnd::default())),
        },
    ];
    let mut responses =
        screening.screen(tokio_stream::iter(requests)).await.expect("screen").into_inner();
    let mut alert_id = None;
    while let Some(response) = responses.message().await.expect("response") {
        if let Some(pb::screen_response::Kind::Verdict(v)) = response.kind {
            alert_id = alert_id.or(v.alerts.first().map(|a| a.alert_id.clone()));
        }
    }
    alert_id.expect("the threat alerts")
}

#[tokio::test]
async fn alerts_and_acknowledgements_are_chained_verified_and_reported() {
    let dir: PathBuf =
        std::env::temp_dir().join(format!("kasuhara-evidence-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let log = dir.join("evidence.jsonl");
    let mut config = shipped_config();
    config.evidence_log = Some(EvidenceLogConfig { path: log.clone(), fsync: FsyncPolicy::Always });
    let server = start_server(config).await;

    let alert_id = screen_conversation(&server, "call-42").await;
    server
        .alerts()
        .await
        .acknowledge(pb::AcknowledgeRequest {
            tenant_id: "acme".into(),
            alert_id: alert_id.clone(),
            acknowledged_by: "supervisor-3".into(),
            outcome: pb::AckOutcome::Escalated.into(),
            note: "passed to legal".into(),
        })
        .await
        .expect("acknowledge");
    let text = wait_for_lines(&log, 2).await;
    server.stop().await.expect("clean stop");
    assert!(!text.contains("1234-5678"), "help: the tenant's masking applies to the log");

    let verified = audit(&["verify"], &log);
    let stdout = String::from_utf8_lossy(&verified.stdout);
    assert!(verified.status.success(), "help: {stdout}");
    assert!(stdout.contains("chain intact"), "{stdout}");

    let report = audit(&["export", "--conversation", "call-42"], &log);
    let report = String::from_utf8_lossy(&report.stdout);
    for want in
        ["**intact**", "ぶっ殺す", "supervisor-3", "ESCALATED", "passed to legal", "agent-7"]
    {
        assert!(report.contains(want), "help: {want} missing from the report:\n{report}");
    }
    assert!(report.contains(&alert_id));

    // Edit the first record's quote: verify fails and names line 1.
    let tampered = dir.join("tampered.jsonl");
    std::fs::write(&tampered, text.replacen("ぶっ殺す", "ぶっとばす", 1)).expect("write copy");
    let failed = audit(&["verify"], &tampered);
    let stdout = String::from_utf8_lossy(&failed.stdout);
    assert!(!failed.status.success(), "help: an edited log must fail: {stdout}");
    assert!(stdout.contains("line 1:"), "{stdout}");
    let report = audit(&["export", "--conversation", "call-42"], &tampered);
    assert!(String::from_utf8_lossy(&report.stdout).contains("**BROKEN** at line 1"));

    // Remove the first record: the second is named.
    let removed = dir.join("removed.jsonl");
    let rest: String = text.lines().skip(1).map(|l| format!("{l}\n")).collect();
    std::fs::write(&removed, rest).expect("write copy");
    let failed = audit(&["verify"], &removed);
    assert!(!failed.status.success());
    assert!(String::from_utf8_lossy(&failed.stdout).contains("line 1: seq 2"));

    // A restarted server continues the chain.
    let mut config = shipped_config();
    config.evidence_log = Some(EvidenceLogConfig { path: log.clone(), fsync: FsyncPolicy::Never });
    let server = start_server(config).await;
    screen_conversation(&server, "call-43").await;
    wait_for_lines(&log, 3).await;
    server.stop().await.expect("clean stop");
    assert!(audit(&["verify"], &log).status.success(), "help: the chain continues across restarts");
    let _ = std::fs::remove_dir_all(dir);
}
