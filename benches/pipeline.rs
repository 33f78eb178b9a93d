//! Criterion benches for the per-segment pipeline: normalise, tokenise, and the whole `screen`,
//! on realistic inputs. Each input's expected number of detections is asserted before timing,
//! so a broken normaliser or lexicon cannot look fast.

use std::hint::black_box;
use std::path::Path;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kasuhara_guard::config::Config;
use kasuhara_guard::pipeline::normalize::normalize;
use kasuhara_guard::pipeline::segment::JapaneseSegmenter;
use kasuhara_guard::server::load_pipeline;

/// (kind, text, expected detections).
static DATA_SET: &[(&str, &str, usize)] = &[
    ("chat-40B", "は？ふざけんな土下座しろよ🙇", 1),
    ("asr-130B", "あのーテレビがえー昨日から映らなくてですねちょっと見てもらえませんかね今日中に", 0),
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

criterion_group!(pipeline, benches);
criterion_main!(pipeline);
