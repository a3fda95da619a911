//! nginx configuration import: the parser (`parse.rs`) and the translator
//! into laneway's route rules (`translate.rs`). Control plane only.

pub mod parse;
pub mod translate;

#[cfg(test)]
mod translate_tests;
