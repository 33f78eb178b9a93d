//! Criterion benches for the per-segment pipeline: normalise, tokenise, and the whole `screen`,
//! on realistic inputs. Each input's expected number of detections is asserted before timing,
//! so a broken normaliser or lexicon cannot look fast.

use std::hint::black_box;
use std::path::Path;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use kasuhara_guard::config::Config;
use kasuhara_guard::pipeline::normalize::normalize;
use kasuhara_guard::pipeline::segment::JapaneseSegmenter;
use kasuhara_guard::server::load_pipeline;

/// (kind, text, expected detections).
static DATA_SET: &[(&str, &str, usize)] = &[
    ("chat-40B", "は？ふざけんな土下座しろよ🙇", 1),
    (
        "asr-130B",
        "あのーテレビがえー昨日から映らなくてですねちょっと見てもらえませんかね今日中に",
        0,
    ),
    (
        "asr-400B",
        "もしもしあのさーさっきから何回も電話してるんだけどさぜんぜんつながらないしやっとつながったと思ったらまた待たされるしほんとにどうなってんのおたくの会社はさ客をなめてんのかおいわかってんのかこっちは金払ってんだぞ責任者出せよいますぐにそれとおまえの名前フルネームで言えよ",
        2,
    ),
];

fn benches(c: &mut Criterion) {
    let pipeline = load_pipeline(&Config {
        lexicon_dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("dictionaries"),
        ..Config::default()
    })
    .expect("shipped lexicon loads");
    let segmenter = JapaneseSegmenter::try_new().expect("dictionary");
    for (kind, text, expected) in DATA_SET {
        let found = pipeline.screen(text).expect("screen").len();
        assert!(found >= *expected, "{kind}: expected at least {expected} detections, got {found}");
    }

    let mut group = c.benchmark_group("normalize");
    for (kind, text, _) in DATA_SET {
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(kind), text, |b, t| {
            b.iter(|| black_box(normalize(t)))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("segment");
    for (kind, text, _) in DATA_SET {
        let normalized = normalize(text);
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(kind), normalized.as_str(), |b, t| {
            b.iter(|| {
                let mut n = 0usize;
                segmenter.for_each_word(t, |_| n += 1).expect("segment");
                black_box(n)
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("screen");
    for (kind, text, _) in DATA_SET {
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(kind), text, |b, t| {
            b.iter(|| black_box(pipeline.screen(t).expect("screen")))
        });
    }
    group.finish();
}

/// Resident set size of this process, from /proc (Linux).
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Measures the state memory of open conversations: opens 10,000, each after three final
/// customer segments (one of them alerting), and divides the RSS growth. Printed, not timed.
fn conversation_state_memory() {
    use kasuhara_guard::alert::AlertIds;
    use kasuhara_guard::callers::CallerHistory;
    use kasuhara_guard::config::TenantPolicy;
    use kasuhara_guard::conversation::{
        Conversation, ConversationInfo, SegmentIn, Services, Speaker,
    };

    const OPEN: usize = 10_000;
    let pipeline = load_pipeline(&Config {
        lexicon_dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("dictionaries"),
        ..Config::default()
    })
    .expect("shipped lexicon loads");
    let ids = AlertIds::default();
    let callers = CallerHistory::default();
    let services = Services { pipeline: &pipeline, ids: &ids, callers: &callers };
    let lines = ["あのテレビが映らないんですけど", "ふざけんな土下座しろよ", "早く直してください"];
    let before = rss_bytes().unwrap_or(0);
    let mut open = Vec::with_capacity(OPEN);
    for n in 0..OPEN {
        let info = ConversationInfo {
            conversation_id: format!("conv-{n}"),
            tenant_id: "tenant".into(),
            customer_id: format!("cust-{n}"),
            queue: "support".into(),
            agent_id: "agent".into(),
            started_at: std::time::SystemTime::now(),
        };
        let mut c = Conversation::open(info, TenantPolicy::default(), &callers);
        for (i, text) in lines.iter().enumerate() {
            let segment = SegmentIn {
                seq: i as u64 + 1,
                speaker: Speaker::Customer,
                text: (*text).into(),
                is_final: true,
                start_ms: i as u64 * 3000,
                end_ms: i as u64 * 3000 + 2500,
            };
            black_box(c.screen(services, &segment).expect("screen"));
        }
        open.push(c);
    }
    let after = rss_bytes().unwrap_or(0);
    println!(
        "conversation state: {} open conversations (3 finals each, incl. caller history) = {} bytes each",
        open.len(),
        after.saturating_sub(before) / OPEN as u64
    );
    black_box(open);
}

criterion_group!(pipeline, benches);

fn main() {
    conversation_state_memory();
    pipeline();
    Criterion::default().configure_from_args().final_summary();
}
