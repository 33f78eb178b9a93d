//! The screening pipeline.
pub mod segment;
