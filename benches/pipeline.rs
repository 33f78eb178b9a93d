//! Criterion benches for the per-segment pipeline: normalise, tokenise, match (the shipped
//! lexicon and a generated 100k-entry one), the whole `screen`, and a 10-turn conversation
//! burst, on realistic inputs. Each input's expected number of hits is asserted before timing,
//! so a broken normaliser, tokeniser or lexicon cannot look fast.
//!
//! Printed, not timed: the memory of an open conversation's state, and the build time,
//! resident growth and compiled size of the 100k-entry lexicon.
//!
//! `cargo bench --bench pipeline`; `cargo bench --bench pipeline -- --test` runs each once.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use kasuhara_guard::alert::AlertIds;
use kasuhara_guard::callers::CallerHistory;
use kasuhara_guard::config::{Config, TenantPolicy};
use kasuhara_guard::conversation::{Conversation, ConversationInfo, SegmentIn, Services, Speaker};
use kasuhara_guard::dictionary::{Entry, Flags, Lexicon, Origin, Pattern};
use kasuhara_guard::pipeline::Pipeline;
use kasuhara_guard::pipeline::matcher::Matcher;
use kasuhara_guard::pipeline::normalize::normalize;
use kasuhara_guard::pipeline::segment::JapaneseSegmenter;
use kasuhara_guard::policy::{Category, Severity};
use kasuhara_guard::server::load_pipeline;

/// (kind, text, expected lexicon hits in the shipped lexicon).
static DATA_SET: &[(&str, &str, usize)] = &[
    ("chat-40B", "は？ふざけんな土下座しろよ🙇", 3),
    (
        "asr-130B",
        "あのーテレビがえー昨日から映らなくてですねちょっと見てもらえませんかね今日中に",
        0,
    ),
    (
        "asr-400B",
        "もしもしあのさーさっきから何回も電話してるんだけどさぜんぜんつながらないしやっとつながったと思ったらまた待たされるしほんとにどうなってんのおたくの会社はさ客をなめてんのかおいわかってんのかこっちは金払ってんだぞ責任者出せよいますぐにそれとおまえの名前フルネームで言えよ",
        6,
    ),
];

/// Ten turns of one heated call, streamed as final customer segments.
static BURST: &[&str] = &[
    "もしもし、昨日買った掃除機が動かないんですけど",
    "はい、電源は入れました。でも全然動かないんです",
    "何回言わせるんだよ、ちゃんと聞いてんのか",
    "おまえじゃ話にならない、責任者出せ",
    "ふざけんな、こっちは客だぞ",
    "今すぐ家まで来て土下座しろ",
    "誠意を見せろよ、誠意を",
    "お前の名前ネットに晒してやるからな",
    "いいから早く交換してください",
    "次に同じことがあったらただじゃおかないぞ",
];
/// Alerts the burst raises in total (confirmed, all ten turns).
const BURST_ALERTS: usize = 5;

/// Entries in the generated lexicon.
const GENERATED_ENTRIES: usize = 100_000;

fn shipped_config() -> Config {
    Config {
        lexicon_dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("dictionaries"),
        ..Config::default()
    }
}

/// The shipped lexicon plus `GENERATED_ENTRIES` generated ones. The generated patterns are
/// two-kanji compounds (an ordered pair from a fixed list of 320 kanji, with a verb or an
/// adjective after), so they tokenise like real vocabulary; none of those kanji occurs in the
/// bench inputs, so the hit counts stay those of the shipped lexicon.
fn generated_lexicon() -> Lexicon {
    const KANJI: &str = "亜哀挨曖握扱宛嵐依威為畏尉萎偉椅彙違維慰遺緯域育壱逸茨芋姻淫陰隠韻唄鬱畝浦詠影鋭疫悦越謁閲炎怨宴援煙猿鉛縁艶汚凹旺欧殴翁奥憶臆虞乙俺卸穏佳苛架華菓渦嫁暇禍靴寡箇稼蚊牙瓦雅餓介戒怪拐悔皆塊楷潰壊懐諧劾崖涯慨蓋骸垣柿核殻郭較隔獲嚇穫岳顎掛括喝渇葛滑褐轄且釜鎌刈甘汗缶肝冠陥乾勘患貫喚堪換敢棺款閑勧寛歓監緩憾還環韓艦鑑含玩頑企伎忌奇祈軌既飢鬼亀幾棋棄毀畿輝騎宜偽欺儀戯擬犠菊吉喫詰却脚虐及丘朽臼糾嗅窮巨拒拠虚距御凶叫狂享況峡挟狭恐恭脅矯響驚仰暁凝巾斤菌琴僅緊錦謹襟吟駆惧愚偶遇隅串屈掘窟繰勲薫刑茎契恵啓掲渓蛍傾携継詣慶憬稽憩鶏迎鯨隙撃桁傑肩倹兼剣拳軒圏堅嫌献遣賢謙鍵繭顕懸幻玄弦舷股虎孤弧枯雇誇鼓錮顧互呉娯悟碁勾孔巧甲江坑抗攻更拘肯侯恒洪荒郊貢控梗喉慌硬絞項溝綱酵稿衡購乞拷剛傲豪克酷獄駒込頃昆恨婚痕紺魂墾懇沙唆詐鎖挫采砕宰栽彩斎債催塞歳載剤削柵索酢搾錯咲刹拶撮擦桟惨傘斬暫旨伺刺祉肢施恣脂紫嗣雌摯賜諮侍";
    const TAILS: [&str; 4] = ["する", "な", "い", ""];
    let kanji: Vec<char> = KANJI.chars().take(320).collect();
    for (kind, text, _) in DATA_SET {
        assert!(!text.chars().any(|c| kanji.contains(&c)), "help: {kind} shares a generated kanji");
    }
    let mut lexicon = Lexicon::load_dir(&shipped_config().lexicon_dir).expect("shipped lexicon");
    let origin = Origin { path: Arc::from(Path::new("generated.tsv")), line: 0 };
    let rationale: Arc<str> = Arc::from("generated");
    let families: Vec<Arc<str>> = (0..1000).map(|f| Arc::from(format!("generated-{f}"))).collect();
    let categories = [Category::Attack, Category::Intimidation, Category::ExcessiveDemand];
    for n in 0..GENERATED_ENTRIES {
        let (a, b) = (kanji[n % kanji.len()], kanji[(n / kanji.len()) % kanji.len()]);
        let pattern = format!("{a}{b}{}", TAILS[n % TAILS.len()]);
        lexicon.entries.push(Entry {
            id: format!("generated.{n}"),
            category: categories[n % categories.len()],
            severity: Severity::Medium,
            family: Arc::clone(&families[n % families.len()]),
            pattern: Pattern::parse(&pattern).expect("generated pattern parses"),
            flags: Flags::default(),
            rationale: Arc::clone(&rationale),
            origin: Origin { line: n + 1, ..origin.clone() },
        });
    }
    lexicon
}

/// Resident set size of this process, from /proc (Linux).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

/// Hits of `matcher` in each bench input, asserted against the expected counts.
fn assert_hits(label: &str, matcher: &Matcher) {
    let found: Vec<usize> = DATA_SET
        .iter()
        .map(|(_, text, _)| matcher.find(normalize(text).as_str()).expect("match").hits.len())
        .collect();
    let expected: Vec<usize> = DATA_SET.iter().map(|&(_, _, n)| n).collect();
    assert_eq!(found, expected, "help: {label} lexicon: hits per input differ");
}

/// Streams the burst through one conversation; returns the confirmed alerts.
fn run_burst(pipeline: &Pipeline, ids: &AlertIds, callers: &CallerHistory, n: usize) -> usize {
    let info = ConversationInfo {
        conversation_id: format!("bench-{n}"),
        tenant_id: "tenant".into(),
        customer_id: format!("customer-{n}"),
        queue: "support".into(),
        agent_id: "agent".into(),
        started_at: std::time::SystemTime::now(),
    };
    let services = Services { pipeline, ids, callers };
    let mut conversation = Conversation::open(info, TenantPolicy::default(), callers);
    let mut alerts = 0;
    for (i, text) in BURST.iter().enumerate() {
        let segment = SegmentIn {
            seq: i as u64 + 1,
            speaker: Speaker::Customer,
            text: (*text).into(),
            is_final: true,
            start_ms: i as u64 * 4000,
            end_ms: i as u64 * 4000 + 3500,
        };
        alerts += conversation.screen(services, &segment).expect("screen").alerts.len();
    }
    alerts
}

fn benches(c: &mut Criterion) {
    let pipeline = load_pipeline(&shipped_config()).expect("shipped lexicon loads");
    let segmenter = JapaneseSegmenter::try_new().expect("dictionary");
    assert_hits("shipped", pipeline.matcher());

    // Resident growth is what the process keeps from the allocator, including build scratch
    // that glibc holds on to after it is freed; the compiled parts' live heap is printed
    // beside it. The entries themselves (ids, families, rationales, paths) are the
    // lexicon's, measured apart from the build.
    let rss_start = rss_bytes();
    let started = Instant::now();
    let lexicon = generated_lexicon();
    let generated = started.elapsed();
    let rss_lexicon = rss_bytes();
    let started = Instant::now();
    let large = Matcher::build(lexicon, segmenter.clone()).expect("100k lexicon");
    let build = started.elapsed();
    let rss_built = rss_bytes();
    let memory = large.memory_usage();
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    println!(
        "generated lexicon: {} entries, {} automaton patterns, built in {:.2} s (+{:.2} s to generate), \
         resident +{:.1} MiB (entries +{:.1}, build +{:.1}); compiled parts {:.1} MiB live \
         (automaton {:.1}, targets {:.1}, vocabulary {:.1})",
        large.entries().len(),
        large.pattern_count(),
        build.as_secs_f64(),
        generated.as_secs_f64(),
        mib(rss_built.saturating_sub(rss_start)),
        mib(rss_lexicon.saturating_sub(rss_start)),
        mib(rss_built.saturating_sub(rss_lexicon)),
        mib(memory.total() as u64),
        mib(memory.automaton as u64),
        mib(memory.targets as u64),
        mib(memory.vocabulary as u64),
    );
    assert_hits("generated", &large);

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

    // Matching includes tokenising: the automaton searches the token layers.
    let shipped_label = format!("match/{}-entries", pipeline.matcher().entries().len());
    let large_label = format!("match/{}-entries", large.entries().len());
    for (label, matcher) in [(shipped_label, pipeline.matcher()), (large_label, &large)] {
        let mut group = c.benchmark_group(label);
        for (kind, text, _) in DATA_SET {
            let normalized = normalize(text);
            group.throughput(Throughput::Bytes(text.len() as u64));
            group.bench_with_input(
                BenchmarkId::from_parameter(kind),
                normalized.as_str(),
                |b, t| b.iter(|| black_box(matcher.find(t).expect("match"))),
            );
        }
        group.finish();
    }

    let mut group = c.benchmark_group("screen");
    for (kind, text, _) in DATA_SET {
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(kind), text, |b, t| {
            b.iter(|| black_box(pipeline.screen(t).expect("screen")))
        });
    }
    group.finish();

    let ids = AlertIds::default();
    let callers = CallerHistory::default();
    assert_eq!(run_burst(&pipeline, &ids, &callers, 0), BURST_ALERTS, "help: burst alerts");
    let mut group = c.benchmark_group("conversation");
    group.throughput(Throughput::Bytes(BURST.iter().map(|t| t.len() as u64).sum()));
    let mut n = 0;
    group.bench_function("10-turn-burst", |b| {
        b.iter(|| {
            n += 1;
            black_box(run_burst(&pipeline, &ids, &callers, n))
        })
    });
    group.finish();
}

/// Measures the state memory of open conversations: opens 10,000, each after three final
/// customer segments (one of them alerting), and divides the RSS growth. Printed, not timed.
fn conversation_state_memory() {
    const OPEN: usize = 10_000;
    let pipeline = load_pipeline(&shipped_config()).expect("shipped lexicon loads");
    let ids = AlertIds::default();
    let callers = CallerHistory::default();
    let services = Services { pipeline: &pipeline, ids: &ids, callers: &callers };
    let lines = ["あのテレビが映らないんですけど", "ふざけんな土下座しろよ", "早く直してください"];
    let before = rss_bytes();
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
    println!(
        "conversation state: {} open conversations (3 finals each, incl. caller history) = {} bytes each",
        open.len(),
        rss_bytes().saturating_sub(before) / OPEN as u64
    );
    black_box(open);
}

criterion_group!(pipeline, benches);

fn main() {
    conversation_state_memory();
    pipeline();
    Criterion::default().configure_from_args().final_summary();
}
