//! The data plane. Two HTTP engines share one per-request decision
//! ([`plan::decide`]: lane, rule, version, pool, header edits) made from one
//! `ArcSwap::load` of the snapshot:
//! - [`h1`], laneway's own lean HTTP/1.x proxy loop on pingora-core's server
//!   (the default: it is what matches nginx's throughput);
//! - [`pingora_engine`], Pingora's `ProxyHttp` framework, which also
//!   serves HTTP/2 (gRPC included) and requests to services reached with
//!   TLS or HTTP/2 ([`services`]).
//!
//! [`front`] serves the HTTPS ([`tls`]) and h2c listeners and hands each
//! connection to the engine its protocol needs; [`connect`] answers
//! `CONNECT` on lane entries by terminating TLS the same way. [`limits`] caps the open
//! client connections of every listener; [`pingora_conn`] reads request
//! heads for the Pingora engine under laneway's time limits; [`hops`]
//! stops requests that loop through laneway; [`lane_pages`] answers the
//! lane switch and the unknown-lane page.

pub mod connect;
pub mod exchange;
pub mod front;
pub mod h1;
pub mod hops;
pub mod http1;
pub mod lane_pages;
pub mod limits;
pub mod pingora_conn;
pub mod pingora_engine;
pub mod plan;
pub mod ports;
pub mod server;
pub mod services;
pub mod stream;
pub mod tls;
pub mod upstream_fields;

use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;

use crate::health::InstanceHealth;
use crate::routing::lanes::LaneSettings;

pub(crate) static X_LANEWAY_VERSION: HeaderName = HeaderName::from_static("x-laneway-version");

/// Static settings of the data plane, from the configuration.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    pub lanes: LaneSettings,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub connect_retries: usize,
    /// Default of a location's `retries`: resends of an idempotent request
    /// whose upstream closed or reset before answering.
    pub read_retries: usize,
    pub response_headers: bool,
    /// How long an idle client connection is kept open.
    pub client_keepalive: Duration,
    /// Idle upstream connections kept per worker and upstream address.
    pub upstream_keepalive: usize,
    /// The LVS health check path answered on every data listener.
    pub health_path: String,
    pub health: Arc<InstanceHealth>,
    /// Largest request body accepted (413 beyond); `None`: no limit.
    pub max_body_size: Option<u64>,
    /// Services reached with TLS or HTTP/2 (`[services.<name>]`).
    pub services: Arc<services::Services>,
    /// The nginx port of each listener (`[routes.nginx_listen]`).
    pub listen_ports: Arc<ports::ListenPorts>,
    /// Time allowed to receive a complete request head (408 beyond).
    pub header_timeout: Duration,
    /// Open client connections allowed; new ones beyond are shed.
    pub max_connections: usize,
    /// Hops through laneway instances allowed (508 beyond).
    pub max_hops: u8,
    /// This laneway process in the hop marker ([`hops`]).
    pub instance_id: Arc<str>,
}
