use kasuhara_guard::pb;
use tokio_stream::StreamExt;

use crate::util::{shipped_config, start_server};

/// Shutdown ends an open subscription with UNAVAILABLE and the server returns cleanly within
/// the grace period, instead of hanging on the open stream.
#[tokio::test]
async fn shutdown_ends_open_streams() {
    let mut config = shipped_config();
    config.shutdown_grace = std::time::Duration::from_secs(2);
    let server = start_server(config).await;
    let mut supervisor = server.alerts().await;
    let mut events = supervisor
        .subscribe(pb::SubscribeRequest { tenant_id: "t".into(), ..Default::default() })
        .await
        .expect("subscribe")
        .into_inner();
    let stopping = tokio::spawn(server.stop());
    let end = tokio::time::timeout(std::time::Duration::from_secs(10), events.next())
        .await
        .expect("stream ends promptly");
    match end {
        Some(Err(status)) => assert_eq!(status.code(), tonic::Code::Unavailable),
        None => {}
        Some(Ok(event)) => panic!("unexpected event {event:?}"),
    }
    tokio::time::timeout(std::time::Duration::from_secs(10), stopping)
        .await
        .expect("server stops within the grace period")
        .expect("join")
        .expect("clean stop");
}

/// A server whose lexicon directory is missing fails to start with an error naming it.
#[tokio::test]
async fn missing_lexicon_is_a_startup_error() {
    let mut config = shipped_config();
    config.lexicon_dir = "/nonexistent/lexicon".into();
    let server = start_server(config).await;
    let err = server.stop().await.expect_err("must fail");
    let chain = format!("{err}: {:?}", std::error::Error::source(&err));
    assert!(chain.contains("/nonexistent/lexicon"), "help: {chain}");
}
