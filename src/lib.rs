//! laneway: a lane-aware reverse proxy for test environments, on Pingora.
//!
//! The data plane (`proxy`, `routing`) reads one immutable snapshot per
//! request; the control plane (`control`, `discovery`, `allocation`,
//! `config`) builds snapshots and swaps them in; the admin plane (`admin`)
//! exposes the REST API, metrics and health.

pub mod admin;
pub mod allocation;
pub mod cli;
pub mod config;
pub mod control;
pub mod discovery;
pub mod health;
pub mod proxy;
pub mod routing;
pub mod telemetry;
pub mod upstream_health;
