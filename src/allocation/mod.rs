//! Allocation: the durable lane store with each lane's entries (VIP, port,
//! hostname), the pools those come from, leases, quarantine and auto lanes,
//! and the crash-safe file helper it shares with the embedded registry.
//! Control plane only: every function is synchronous and is called with the
//! owning store behind a `tokio::sync::Mutex`; nothing here runs on the
//! request path.

pub mod auto;
pub mod consul_kv;
pub mod file;
pub mod journal;
pub mod lanes;
pub mod lifecycle;
pub mod owner;
pub mod pools;

pub use file::StoreError;
pub use pools::AllocationError;
