use std::path::PathBuf;

use kasuhara_guard::client;
use kasuhara_guard::eval::{self, Floors};

use crate::util::{shipped_config, start_server};

/// Quality floors on ../shared/eval/dev, scored through the real gRPC API. Raise them as
/// quality grows; a drop fails CI.
const DEV_FLOORS: Floors = Floors {
    any_alert_f1: 0.98,
    max_false_alarm_rate: 0.01,
    critical_recall: 1.0,
    category_f1: 0.95,
    category_min_support: 15,
    conversation_pass_rate: 1.0,
};

/// The dev corpus meets the floors when replayed through ScreenText and Screen.
#[tokio::test]
async fn dev_corpus_meets_floors() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/eval/dev");
    let corpus = eval::load_corpus(&dir).expect("dev corpus loads");
    let server = start_server(shipped_config()).await;
    let mut screening = client::connect(&server.endpoint()).await.expect("connect");
    let utterances =
        client::replay_utterances(&mut screening, &corpus, "eval").await.expect("utterances");
    let conversations =
        client::replay_conversations(&mut screening, &corpus, "eval").await.expect("conversations");
    let report = eval::score(&corpus, &utterances, &conversations);
    if let Err(violations) = report.check_floors(&DEV_FLOORS) {
        panic!("dev floors violated:\n{}\n\n{report}", violations.join("\n"));
    }
    server.stop().await.expect("clean stop");
}
