//! The lexicon parser: any file content, as an entry file or a context-rule file, parses or
//! fails with errors that name a line of that file, never panics.
#![no_main]

use std::path::Path;

use kasuhara_guard::dictionary::{DictionaryError, Lexicon};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (bool, &str)| {
    let (context, text) = input;
    let path = Path::new(if context { "context.tsv" } else { "fuzz.tsv" });
    let lines = text.lines().count();
    match Lexicon::parse_files([(path, text)]) {
        Ok(lexicon) => assert!(lexicon.entries.len() + lexicon.rules.len() <= lines),
        Err(DictionaryError::Invalid(errors)) => {
            assert!(!errors.is_empty());
            for error in errors {
                assert_eq!(&*error.origin.path, path);
                assert!((1..=lines).contains(&error.origin.line), "line {}", error.origin.line);
            }
        }
        Err(other) => panic!("parse_files can only fail with Invalid, got {other}"),
    }
});
