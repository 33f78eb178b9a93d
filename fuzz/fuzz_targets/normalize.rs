//! Normalisation: any text normalises without panicking, and every span of the normalised text
//! maps back inside the original.
#![no_main]

use kasuhara_guard::pipeline::normalize::normalize;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let normalized = normalize(text);
    let len = normalized.as_str().len();
    let original_chars = text.chars().count();
    assert_eq!(normalized.original_len_chars(), original_chars);
    // Every char boundary of the normalised text, paired with the end, maps back in bounds.
    for (start, _) in normalized.as_str().char_indices() {
        let span = normalized.original_chars(start..len);
        assert!(
            span.start <= span.end && span.end <= original_chars,
            "{span:?} out of {original_chars}"
        );
    }
});
