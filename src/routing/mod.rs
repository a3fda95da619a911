//! Routing: the compiled production rules, lanes and instance pools. Pure and
//! synchronous (no tokio, no sockets): it is tested and benchmarked alone.
//! The request path reads it through one [`snapshot::Snapshot`].

pub(crate) mod hash;
pub mod lanes;
pub mod rewrite;
pub mod rules;
pub mod snapshot;
