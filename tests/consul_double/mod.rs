//! A Consul HTTP API double for laneway's tests, faithful on the points in
//! `CONSUL.md`: blocking queries on one global raft-like index, the
//! catalog/health/agent/KV/session endpoints a watcher and its tests use,
//! ACL tokens, and the faults a watcher must survive (no leader, 429,
//! dropped connections, slowness, the agent going away and coming back on
//! the same port, the 200-connections-per-client limit).
//!
//! Test support only, on the control plane of nothing: [`ConsulDouble::start`]
//! binds `127.0.0.1:0` and serves from its own thread and tokio runtime until
//! dropped. The test controls below are plain blocking methods, usable from
//! any thread while clients are blocked on the double.
//!
//! Layout: [`server`] (sockets, relay, socket faults), [`http`] (routing,
//! request and error types), [`blocking`] (index/wait/consistency and read
//! metadata), [`catalog`] and [`agent`] (endpoints), [`definition`]
//! (registration bodies), [`checks`] (TTL, HTTP and TCP checks, reaping),
//! [`kv`] and [`session`], [`filter`] (the `?filter=` subset), [`acl`],
//! [`faults`], [`stats`], [`shared`], [`state`] and [`render`] (the data and
//! its JSON), [`duration`] and [`base64`].
//!
//! Where the double knowingly differs from Consul:
//! - One global index for every endpoint: any write wakes every blocked
//!   query (Consul keeps finer per-table and per-service indexes, so it
//!   wakes less often; a client correct here is correct there).
//! - `?filter=` supports only `Meta == "v"` and `Tags contains "t"` joined
//!   by `and`; anything else is a 400 saying so.
//! - Only HTTP (plain `http://`), TCP and TTL checks run; other kinds are
//!   refused at registration.
//! - Error answers carry no `X-Consul-*` headers.
#![allow(dead_code)]

pub mod acl;
pub mod agent;
pub mod base64;
pub mod blocking;
pub mod catalog;
pub mod checks;
pub mod definition;
pub mod duration;
pub mod faults;
pub mod filter;
pub mod http;
pub mod kv;
pub mod render;
pub mod server;
pub mod session;
pub mod shared;
pub mod state;
pub mod stats;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use self::definition::ServiceDef;
use self::server::Server;
use self::shared::Shared;
pub use self::state::{Status, AGENT_NODE};
pub use self::stats::RequestRecord;

/// A running Consul double; stops serving and frees its port when dropped.
pub struct ConsulDouble {
    sh: Arc<Shared>,
    server: Server,
}

impl ConsulDouble {
    /// Starts a one-node cluster (`node-1` at 127.0.0.1, with the `consul`
    /// service) on an ephemeral loopback port.
    pub fn start() -> ConsulDouble {
        let (server, sh) = Server::start();
        ConsulDouble { sh, server }
    }

    /// Starts the double and takes it down at once, for "Consul is down
    /// when the client starts"; [`reachable`](Self::reachable) brings it up
    /// on the same port.
    pub fn start_unreachable() -> ConsulDouble {
        let double = ConsulDouble::start();
        double.unreachable();
        double
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    // ------------------------------------------------------------ catalog

    /// Adds a node (with a passing `serfHealth`) services can live on.
    pub fn add_node(&self, name: &str, address: &str) {
        self.sh.write(|tx| {
            let idx = tx.index();
            tx.st.add_node(name, address, idx);
        });
    }

    /// Registers a service on `node-1` exactly as
    /// `PUT /v1/agent/service/register` with this body would; panics with
    /// Consul's 400 message if the body is invalid.
    pub fn register(&self, body: Value) {
        self.register_on(AGENT_NODE, body);
    }

    /// As [`register`](Self::register), on another node (see
    /// [`add_node`](Self::add_node)).
    pub fn register_on(&self, node: &str, body: Value) {
        let def = ServiceDef::parse(&body)
            .unwrap_or_else(|e| panic!("consul double: register {body}: {}", e.msg));
        agent::apply_register(&self.sh, node, def, false)
            .unwrap_or_else(|e| panic!("consul double: register {body}: {}", e.msg));
    }

    /// Deregisters a service of `node-1`; false if it was not registered.
    pub fn deregister(&self, service_id: &str) -> bool {
        self.deregister_on(AGENT_NODE, service_id)
    }

    pub fn deregister_on(&self, node: &str, service_id: &str) -> bool {
        agent::remove_service(&self.sh, node, service_id)
    }

    /// Sets any check of `node-1` (TTL, HTTP, TCP or `serfHealth`); panics
    /// if there is no such check. Only a change moves the index.
    pub fn set_check_status(&self, check_id: &str, status: Status) {
        self.set_check_status_on(AGENT_NODE, check_id, status);
    }

    pub fn set_check_status_on(&self, node: &str, check_id: &str, status: Status) {
        let ckey = state::key(node, check_id);
        let output = format!("set by the test to {}", status.as_str());
        if checks::set_status(&self.sh, &ckey, status, Some(output)).is_none() {
            panic!("consul double: no check {check_id:?} on node {node:?}");
        }
    }

    /// Sets a node's `serfHealth`, which every instance on it depends on.
    pub fn set_node_health(&self, node: &str, status: Status) {
        self.set_check_status_on(node, state::SERF_CHECK, status);
    }

    /// A check's current status, if it exists.
    pub fn check_status(&self, node: &str, check_id: &str) -> Option<Status> {
        self.sh
            .lock()
            .checks
            .get(&state::key(node, check_id))
            .map(|c| c.status)
    }

    /// The index the next read answer carries.
    pub fn index(&self) -> u64 {
        self.sh.lock().response_index()
    }

    /// A write that changes nothing any endpoint shows (like the coordinate
    /// updates agents send all the time), so it only moves the index and
    /// wakes blocked queries. Returns the new index.
    pub fn unrelated_write(&self) -> u64 {
        self.sh.write(|tx| tx.index())
    }

    /// Moves the index back to `n` (as a snapshot restore does); later
    /// answers carry it, and no record keeps a higher index. A query blocked
    /// on a higher index keeps waiting until its wait ends.
    pub fn set_index_backwards(&self, n: u64) {
        self.sh.lock().backwards(n);
        self.sh.wake();
    }

    /// Sets a KV key directly.
    pub fn kv_put(&self, key: &str, value: &[u8]) {
        self.sh.write(|tx| {
            let idx = tx.index();
            tx.st.kv.set(key, value.to_vec(), 0, idx);
        });
    }

    pub fn kv_get(&self, key: &str) -> Option<Vec<u8>> {
        self.sh.lock().kv.entries.get(key).map(|e| e.value.clone())
    }

    /// Ends a session now, as when its TTL runs out; false if unknown.
    pub fn expire_session(&self, id: &str) -> bool {
        session::expire(&self.sh, id)
    }

    /// How services with a `DeregisterCriticalServiceAfter` check are
    /// reaped: the shortest allowed timeout (Consul: 1 min) and how often
    /// the agent looks (Consul: 30 s). Shorten both for tests.
    pub fn set_check_reaper(&self, min_timeout: Duration, interval: Duration) {
        *self.sh.reaper.lock().unwrap_or_else(|p| p.into_inner()) = (min_timeout, interval);
    }

    // ---------------------------------------------------------------- ACL

    /// Turns ACLs on with `token` as the one accepted (management) token and
    /// default-deny for everyone else, or off with `None`.
    pub fn set_acl_token(&self, token: Option<&str>) {
        self.sh.acl.set_token(token);
    }

    /// With ACLs on, answer token-less catalog and health reads as real
    /// Consul does, with empty results and
    /// `X-Consul-Results-Filtered-By-ACLs: true`, instead of 403.
    pub fn acl_filter_reads(&self, on: bool) {
        self.sh.acl.set_filter_reads(on);
    }

    // ------------------------------------------------------------- faults

    /// Reads without `?stale`, and KV and session writes, answer 500
    /// `No cluster leader`; `?stale` reads still answer, with
    /// `X-Consul-KnownLeader: false` and a growing `X-Consul-LastContact`.
    /// Blocked queries re-check at once.
    pub fn fail_with_no_leader(&self, on: bool) {
        self.sh.faults.set_no_leader(on);
        self.sh.wake();
    }

    /// Every request is answered 429.
    pub fn rate_limit(&self, on: bool) {
        self.sh.faults.set_rate_limited(on);
    }

    /// New connections are accepted, their request read (and counted),
    /// then closed without a response. Turning it on also closes the
    /// connections already open.
    pub fn drop_connections(&self, on: bool) {
        self.sh.faults.set_drop_connections(on);
        if on {
            self.server.cut_connections();
        }
    }

    /// Delays every answer by `delay` (zero turns it off).
    pub fn slow(&self, delay: Duration) {
        self.sh.faults.set_slow(delay);
    }

    /// Stops listening and closes every open connection: connects are
    /// refused until [`reachable`](Self::reachable).
    pub fn unreachable(&self) {
        self.server.unreachable();
    }

    /// Listens again on the same port.
    pub fn reachable(&self) {
        self.server.reachable();
    }

    /// Consul's `limits.http_max_conns_per_client` (default 200): past it a
    /// new connection gets `HTTP/1.1 429 Too Many Requests` and is closed.
    pub fn set_max_conns_per_client(&self, n: usize) {
        self.sh.faults.set_max_conns_per_client(n);
    }

    /// Deregistering an unknown service ID: a no-op 200 by default (as
    /// `CONSUL.md` says and Consul before 1.9 did), or current Consul's 404
    /// `Unknown service ID "<id>". …` when on.
    pub fn deregister_unknown_is_404(&self, on: bool) {
        self.sh.faults.set_deregister_unknown_404(on);
    }

    // ----------------------------------------------------------- counters

    /// Requests received for exactly `path` (e.g. `/v1/health/service/web`),
    /// dropped ones included.
    pub fn requests(&self, path: &str) -> usize {
        self.sh.stats.count(path, None)
    }

    /// As [`requests`](Self::requests), counting only those received at or
    /// after `since` (for "how many per minute").
    pub fn requests_since(&self, path: &str, since: Instant) -> usize {
        self.sh.stats.count(path, Some(since))
    }

    /// Requests whose path starts with `prefix` (e.g. every
    /// `/v1/health/service/` watch), dropped ones included.
    pub fn requests_with_prefix(&self, prefix: &str) -> usize {
        self.sh
            .stats
            .log()
            .iter()
            .filter(|r| r.path.starts_with(prefix))
            .count()
    }

    pub fn total_requests(&self) -> usize {
        self.sh.stats.total()
    }

    /// Every request received, in order.
    pub fn request_log(&self) -> Vec<RequestRecord> {
        self.sh.stats.log()
    }

    /// Client connections open now.
    pub fn open_connections(&self) -> usize {
        self.sh.stats.open()
    }

    /// The most client connections open at once since start (or the last
    /// [`reset_peak_connections`](Self::reset_peak_connections)).
    pub fn peak_connections(&self) -> usize {
        self.sh.stats.peak()
    }

    pub fn reset_peak_connections(&self) {
        self.sh.stats.reset_peak();
    }

    /// Connections closed unanswered by [`drop_connections`](Self::drop_connections).
    pub fn dropped_connections(&self) -> usize {
        self.sh.stats.dropped()
    }

    /// Connections refused for the per-client limit.
    pub fn rejected_connections(&self) -> usize {
        self.sh.stats.rejected()
    }

    /// Queries waiting in a blocking query right now: poll this to know a
    /// client is blocked before making the change it waits for.
    pub fn blocked_queries(&self) -> usize {
        self.sh.stats.blocked()
    }
}
