use std::path::PathBuf;

use kasuhara_guard::config::PolicySet;
use kasuhara_guard::pb;
use kasuhara_guard::server::{self, ServerError};

use crate::util::{shipped_config, start_server};

/// A fresh directory under the system temp dir holding one overlay file.
fn overlay_dir(name: &str, file: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kasuhara-overlay-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join(file), text).expect("write overlay");
    dir
}

fn categories(response: &pb::ScreenTextResponse) -> Vec<(i32, String)> {
    response
        .alerts
        .iter()
        .map(|a| (a.category, a.evidence.first().map(|e| e.entry_id.clone()).unwrap_or_default()))
        .collect()
}

async fn screen_text(
    client: &mut pb::screening_service_client::ScreeningServiceClient<tonic::transport::Channel>,
    tenant: &str,
    text: &str,
) -> pb::ScreenTextResponse {
    client
        .screen_text(pb::ScreenTextRequest {
            tenant_id: tenant.into(),
            channel: pb::Channel::Chat.into(),
            speaker: pb::Speaker::Customer.into(),
            text: text.into(),
        })
        .await
        .expect("screen_text")
        .into_inner()
}

/// A tenant's overlay adds its own entry and switches one shared entry off, for that tenant
/// only; other tenants keep the shared lexicon.
#[tokio::test]
async fn overlay_adds_and_disables_entries_per_tenant() {
    let dir = overlay_dir(
        "clinic",
        "clinic.tsv",
        "clinic.quack\tATTACK\tMEDIUM\tinsult-fool\tぼったくり医者\t-\tcontempt for the clinic's doctors\n",
    );
    let toml = format!(
        "[tenants.clinic]\nlexicon_overlay = {:?}\nlexicon_disable = [\"attack.noroma\"]\n",
        dir.display().to_string()
    );
    let mut config = shipped_config();
    config.policy = PolicySet::parse(&toml).expect("policy parses");
    let server = start_server(config).await;
    let mut client = server.screening().await;

    let added = screen_text(&mut client, "clinic", "このぼったくり医者が").await;
    assert_eq!(categories(&added), vec![(pb::Category::Attack as i32, "clinic.quack".into())]);
    let shared = screen_text(&mut client, "other", "このぼったくり医者が").await;
    assert_eq!(categories(&shared), Vec::new(), "help: the overlay must not leak to other tenants");

    let disabled = screen_text(&mut client, "clinic", "このノロマ").await;
    assert_eq!(categories(&disabled), Vec::new());
    let shared = screen_text(&mut client, "other", "このノロマ").await;
    assert_eq!(categories(&shared), vec![(pb::Category::Attack as i32, "attack.noroma".into())]);

    server.stop().await.expect("clean stop");
    let _ = std::fs::remove_dir_all(dir);
}

/// A broken overlay stops start-up with the overlay's file:line, and an overlay that
/// redefines or disables an unknown id names it.
#[tokio::test]
async fn bad_overlays_are_refused_with_their_location() {
    let broken =
        overlay_dir("broken", "bad.tsv", "clinic.bad\tATTACK\tSEVERE\tx\tぼったくり\t-\tr\n");
    let clash =
        overlay_dir("clash", "clash.tsv", "attack.noroma\tATTACK\tLOW\tx\tぼったくり\t-\tr\n");
    for (toml, expect) in [
        (
            format!("[tenants.c]\nlexicon_overlay = {:?}\n", broken.display().to_string()),
            "bad.tsv:1",
        ),
        (
            format!("[tenants.c]\nlexicon_overlay = {:?}\n", clash.display().to_string()),
            "clash.tsv:1",
        ),
        (
            "[tenants.c]\nlexicon_disable = [\"attack.no-such-entry\"]\n".to_owned(),
            "attack.no-such-entry",
        ),
    ] {
        let mut config = shipped_config();
        config.policy = PolicySet::parse(&toml).expect("policy parses");
        let err = match server::load_pipelines(&config) {
            Err(e @ ServerError::Dictionary(_)) => format!(
                "{e}: {}",
                std::error::Error::source(&e).map(ToString::to_string).unwrap_or_default()
            ),
            other => panic!("expected a lexicon error for {toml}, got {:?}", other.map(|_| ())),
        };
        assert!(err.contains(expect), "help: {err:?} should name {expect}");
    }
    let _ = std::fs::remove_dir_all(broken);
    let _ = std::fs::remove_dir_all(clash);
}
