//! In-process throughput on one core, for `scripts/compare.sh`: the whole `screen` pipeline
//! and lindera tokenisation alone, over the same corpus, each repeated for about two seconds.
//!
//! `cargo run --release --example throughput -- CORPUS [LEXICON_DIR]` prints one JSON line.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kasuhara_guard::config::Config;
use kasuhara_guard::loadgen::load_corpus;
use kasuhara_guard::pipeline::segment::JapaneseSegmenter;
use kasuhara_guard::server::load_pipeline;

/// Runs `pass` over the corpus until `MIN_TIME` has passed; returns chars per second.
fn chars_per_second(texts: &[String], mut pass: impl FnMut(&str) -> usize) -> (f64, usize) {
    const MIN_TIME: Duration = Duration::from_secs(2);
    let chars: usize = texts.iter().map(|t| t.chars().count()).sum();
    let mut hits = 0;
    for t in texts {
        hits += pass(t); // warm caches and lindera's per-thread worker
    }
    let started = Instant::now();
    let mut rounds = 0;
    while started.elapsed() < MIN_TIME {
        for t in texts {
            black_box(pass(t));
        }
        rounds += 1;
    }
    ((chars * rounds) as f64 / started.elapsed().as_secs_f64(), hits)
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let corpus = PathBuf::from(args.next().unwrap_or("../shared/eval/dev/utterances.jsonl".into()));
    let lexicon_dir = PathBuf::from(args.next().unwrap_or("dictionaries".into()));
    let texts = load_corpus(&corpus)?;
    let pipeline = load_pipeline(&Config { lexicon_dir, ..Config::default() })?;
    let segmenter = JapaneseSegmenter::try_new()?;
    let (screen, detections) =
        chars_per_second(&texts, |t| pipeline.screen(t).map(|d| d.len()).unwrap_or(0));
    let (lindera, words) = chars_per_second(&texts, |t| {
        let mut n = 0;
        segmenter.for_each_word(t, |_| n += 1).map(|()| n).unwrap_or(0)
    });
    let line = serde_json::json!({
        "texts": texts.len(),
        "chars": texts.iter().map(|t| t.chars().count()).sum::<usize>(),
        "screen_chars_per_s": screen,
        "screen_detections": detections,
        "lindera_chars_per_s": lindera,
        "lindera_words": words,
    });
    println!("{line}");
    Ok(())
}
