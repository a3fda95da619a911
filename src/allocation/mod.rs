//! Allocation: the durable lane store and the crash-safe file helper it
//! shares with the embedded registry. Control plane only: every function is
//! synchronous and is called with the owning store behind a
//! `tokio::sync::Mutex`; nothing here runs on the request path.

pub mod file;
pub mod lanes;

pub use file::StoreError;
