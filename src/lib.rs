//! kasuhara-guard: real-time screening of contact-centre transcripts for customer harassment.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod pipeline;
pub mod policy;
