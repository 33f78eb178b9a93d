//! Tokenisation plus matching: the full shared lexicon screens any text without panicking, and
//! every piece of evidence quotes the original text at the offsets it claims.
#![no_main]

use std::path::Path;
use std::sync::LazyLock;

use kasuhara_guard::dictionary::Lexicon;
use kasuhara_guard::pipeline::Pipeline;
use kasuhara_guard::pipeline::matcher::Matcher;
use kasuhara_guard::pipeline::segment::JapaneseSegmenter;
use libfuzzer_sys::fuzz_target;

/// Built once per process: the repository's lexicon (the fuzz crate sits one level down).
static PIPELINE: LazyLock<Pipeline> = LazyLock::new(|| {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dictionaries");
    // A fuzz run without the lexicon would test nothing: failing loudly is the point.
    let lexicon = Lexicon::load_dir(&dir).expect("the repository lexicon loads");
    let segmenter = JapaneseSegmenter::try_new().expect("the embedded dictionary loads");
    Pipeline::new(Matcher::build(lexicon, segmenter).expect("the repository lexicon compiles"))
});

fuzz_target!(|text: &str| {
    let Ok(findings) = PIPELINE.findings(text) else { return };
    let original: Vec<char> = text.chars().collect();
    for finding in findings {
        let evidence = finding.evidence;
        assert!(evidence.start <= evidence.end && evidence.end <= original.len());
        assert!(evidence.context_start <= evidence.context.chars().count());
    }
});
