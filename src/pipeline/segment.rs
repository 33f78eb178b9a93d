//! Tokenisation: splits normalised Japanese text into words with lindera and the embedded IPADIC
//! dictionary, and hands each word's surface, base form (原形) and reading (読み) to the matcher.
//!
//! Lindera stays behind this file: its API changes between versions, and nothing else in the
//! crate names a lindera type (charabia's `Segmenter` boundary does the same).
//!
//! The dictionary is compiled by `build.rs` from the vendored IPADIC source and embedded in the
//! binary, so there is nothing to download or find on disk at run time. Lindera's `Segmenter`
//! is cheap to clone (the dictionary is behind `Arc`s) but segmenting needs a mutable lattice,
//! so each thread keeps its own `SegmentWorker` (lindera's intended pattern) and reuses its
//! buffers across calls.

use std::cell::RefCell;
use std::ops::Range;
use std::sync::OnceLock;

use lindera::dictionary::Dictionary;
use lindera::mode::Mode;
use lindera::segmenter::Segmenter;
use lindera::worker::SegmentWorker;

mod ipadic {
    // The files come from `build.rs`, which writes them under `$LINDERA_WORKDIR/lindera-ipadic`.
    lindera_dictionary::embedded_dictionary!("/lindera-ipadic", EmbeddedIpadicLoader);
}

/// IPADIC's details index of the base form (原形); `*` when unknown.
const DETAIL_BASE_FORM: usize = 6;
/// IPADIC's details index of the reading (読み, katakana); `*` or absent when unknown.
const DETAIL_READING: usize = 7;
/// IPADIC's details index of the part of speech (品詞).
const DETAIL_POS: usize = 0;

/// One word of the text, as the matcher sees it; borrowed for the duration of a callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word<'a> {
    /// Byte range of the word in the segmented text.
    pub range: Range<usize>,
    /// The word as written.
    pub surface: &'a str,
    /// The dictionary form (殺せ → 殺す); the surface for unknown words.
    pub base_form: &'a str,
    /// The reading in katakana (殺せ → コロセ); the surface for unknown words.
    pub reading: &'a str,
    /// The part of speech (名詞, 動詞, 助詞, ...).
    pub part_of_speech: &'a str,
    /// The word is not in the dictionary: lindera grouped characters of one script (a run
    /// of hiragana such as むのうだな), so its edges are guesses.
    pub unknown: bool,
}

/// An error from the tokeniser; lindera's own error type is kept out of our API.
#[derive(Debug, thiserror::Error)]
#[error("tokeniser failed: {0}")]
pub struct SegmentError(String);

/// The Japanese tokeniser: lindera in normal mode over the embedded IPADIC.
#[derive(Clone)]
pub struct JapaneseSegmenter {
    segmenter: Segmenter,
}

impl std::fmt::Debug for JapaneseSegmenter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JapaneseSegmenter(ipadic)")
    }
}

impl JapaneseSegmenter {
    /// Loads the embedded dictionary (about a millisecond; the first call pays it, later calls
    /// share it).
    ///
    /// # Errors
    /// Fails only if the embedded dictionary is corrupt, which a build would already show.
    pub fn try_new() -> Result<Self, SegmentError> {
        static DICTIONARY: OnceLock<Result<Dictionary, String>> = OnceLock::new();
        let dictionary = DICTIONARY
            .get_or_init(|| ipadic::load().map_err(|e| e.to_string()))
            .clone()
            .map_err(SegmentError)?;
        Ok(Self { segmenter: Segmenter::new(Mode::Normal, dictionary, None) })
    }

    /// Calls `each` for every word of `text`, in order. Whitespace is skipped, so word ranges
    /// need not touch; every byte of `text` other than whitespace is in exactly one word.
    ///
    /// # Errors
    /// Returns the tokeniser's error; none is known to occur on valid UTF-8.
    pub fn for_each_word(
        &self,
        text: &str,
        mut each: impl FnMut(Word<'_>),
    ) -> Result<(), SegmentError> {
        thread_local! {
            // One worker per thread: the worker owns a reusable lattice and is `&mut` only.
            // The `Option` is filled on the first call with a clone of the caller's segmenter;
            // all segmenters share the one embedded dictionary, so any of them will do.
            static WORKER: RefCell<Option<SegmentWorker>> = const { RefCell::new(None) };
        }
        WORKER.with(|cell| {
            let mut slot = cell.borrow_mut();
            let worker = slot.get_or_insert_with(|| self.segmenter.new_worker());
            let tokens = worker.segment(text).map_err(|e| SegmentError(e.to_string()))?;
            for mut token in tokens {
                let range = token.byte_start..token.byte_end;
                let surface = &text[range.clone()];
                let details = token.details();
                let pick = |i: usize| match details.get(i) {
                    Some(&d) if d != "*" && !d.is_empty() => d,
                    _ => surface,
                };
                let unknown =
                    !matches!(details.get(DETAIL_READING), Some(&d) if d != "*" && !d.is_empty());
                let word = Word {
                    range: range.clone(),
                    surface,
                    base_form: pick(DETAIL_BASE_FORM),
                    reading: pick(DETAIL_READING),
                    part_of_speech: details.get(DETAIL_POS).copied().unwrap_or(""),
                    unknown,
                };
                each(word);
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<(String, String, String)> {
        let seg = JapaneseSegmenter::try_new().expect("embedded dictionary loads");
        let mut out = Vec::new();
        seg.for_each_word(text, |w| {
            out.push((w.surface.to_owned(), w.base_form.to_owned(), w.reading.to_owned()))
        })
        .expect("segment");
        out
    }

    /// Inflected verbs report their dictionary form and reading, which the matcher relies on.
    #[test]
    fn base_form_and_reading() {
        let w = words("殺せ");
        assert_eq!(w, vec![("殺せ".into(), "殺す".into(), "コロセ".into())]);
    }

    /// Loanwords stay one word, so バカ can never match inside バカンス.
    #[test]
    fn loanword_is_one_token() {
        let w = words("来月からバカンスです");
        assert!(w.iter().any(|(s, _, _)| s == "バカンス"), "help: got {w:?}");
    }

    /// Every non-space byte is covered exactly once: segments concatenate back to the input.
    #[test]
    fn words_concatenate_back() {
        for text in
            ["おいてめえぶっ殺すぞ", "土下座しろよ", "テレビが映らないんですけど", "abc 123"]
        {
            let joined: String = words(text).into_iter().map(|(s, _, _)| s).collect();
            assert_eq!(joined, text.replace(' ', ""), "help: segmenting {text:?}");
        }
    }

    /// Unknown words fall back to the surface rather than IPADIC's `*`.
    #[test]
    fn unknown_word_falls_back_to_surface() {
        let w = words("ｚｚｑｘ");
        assert!(w.iter().all(|(_, b, r)| b != "*" && r != "*"), "help: got {w:?}");
    }
}
