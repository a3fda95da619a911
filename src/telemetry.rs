//! Logging (`tracing`) set-up, the access log ([`access`], written by
//! [`access_writer`]) and the Prometheus registry with every laneway
//! metric. Metric families are created once here; the snapshot compiler
//! resolves their label children ahead of time so the request path only
//! increments atomics. Control plane, except [`access::log`].

pub mod access;
pub mod access_writer;
pub mod audit;
pub mod instance_health;

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub use access::{AccessRecord, ACCESS_FIELDS, ACCESS_FIELDS_DEFAULT};
pub use instance_health::{InstanceHealthGauge, InstanceHealthSource};

use crate::config::{LogConfig, LogFormat};

/// The name of the access log in log filters: `laneway::access=off` in
/// `RUST_LOG` or `[log] level` turns it off, like `[log] access_log = false`.
pub const ACCESS_LOG_TARGET: &str = "laneway::access";

/// How long exit waits for queued access-log lines to be written.
const EXIT_FLUSH: Duration = Duration::from_secs(2);

/// Access-log lines dropped because the writer fell behind; one counter
/// for the process, registered in every [`Metrics`].
static ACCESS_LOG_DROPPED: LazyLock<IntCounter> = LazyLock::new(|| {
    IntCounter::new(
        "laneway_access_log_dropped_total",
        "Access-log lines dropped because the writer fell behind",
    )
    .expect("metric definition")
});

/// Why logging could not start.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("cannot open [log] access_file {path}: {error}; check that its directory exists and laneway may write there")]
    AccessFile {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
    #[error("cannot start the access-log writer thread: {0}")]
    Thread(std::io::Error),
    #[error("cannot install the SIGUSR1 handler that reopens the access log: {0}")]
    Signal(std::io::Error),
}

/// Installs the global `tracing` subscriber (the main log, on standard
/// error) and the access log. `RUST_LOG` overrides the configured level.
///
/// The access log is on unless `[log] access_log = false` or the filter
/// says `laneway::access=off`; it goes to `[log] access_file` (appended to,
/// reopened on SIGUSR1) or else to standard error. Its lines are text, or
/// JSON of `[log] access_fields` with `[log] access_format = "json"` (and
/// JSON of every field when the main log is JSON). Lines still queued at
/// exit are written out first.
pub fn init_logging(cfg: &LogConfig) -> Result<(), LogError> {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| cfg.level.clone());
    let access_on = cfg.access_log && !filter_turns_off_access(&filter);
    let env_filter = EnvFilter::try_new(&filter).unwrap_or_else(|e| {
        eprintln!("laneway: invalid log filter {filter:?} ({e}); using \"info\"");
        EnvFilter::new("info")
    });
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let fmt = match cfg.format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
    };
    let result = tracing_subscriber::registry()
        .with(env_filter)
        .with(fmt)
        .try_init();
    if let Err(e) = result {
        eprintln!("laneway: logging already initialised: {e}");
    }
    if access_on {
        start_access_log(cfg)?;
    }
    Ok(())
}

/// Whether a `tracing` filter has `laneway::access=off` (or a level that
/// leaves out `info`) as its last word on the access log's target.
fn filter_turns_off_access(filter: &str) -> bool {
    filter
        .split(',')
        .filter_map(|d| d.split_once('='))
        .rfind(|(target, _)| target.trim() == ACCESS_LOG_TARGET)
        .is_some_and(|(_, level)| {
            matches!(
                level.trim().to_ascii_lowercase().as_str(),
                "off" | "error" | "warn"
            )
        })
}

fn start_access_log(cfg: &LogConfig) -> Result<(), LogError> {
    let fields = |names: &[&str]| -> Box<[access::Field]> {
        names
            .iter()
            .filter_map(|n| access::Field::from_name(n))
            .collect()
    };
    let format = if cfg.access_format == LogFormat::Json {
        let names: Vec<&str> = cfg.access_fields.iter().map(String::as_str).collect();
        access::Format::Json(fields(&names))
    } else if cfg.format == LogFormat::Json {
        access::Format::Json(fields(&ACCESS_FIELDS))
    } else {
        access::Format::Text
    };
    let dest = match &cfg.access_file {
        Some(path) => access_writer::Destination::File {
            file: access_writer::open(path).map_err(|error| LogError::AccessFile {
                path: path.clone(),
                error,
            })?,
            path: path.clone(),
        },
        None => access_writer::Destination::Stderr,
    };
    let writer = access_writer::AccessWriter::start(dest, ACCESS_LOG_DROPPED.clone())
        .map_err(LogError::Thread)?;
    access::install(format, writer);
    install_process_hooks()
}

/// The access log's process-wide hooks: SIGUSR1 reopens the file (log
/// rotation), and an exit hook writes out the lines still queued. This is
/// the one place laneway uses `unsafe` (Cargo.toml denies it everywhere
/// else): both are FFI registrations, each with its contract stated below.
#[allow(unsafe_code)]
fn install_process_hooks() -> Result<(), LogError> {
    // SAFETY: the action only adds to an atomic counter, which is
    // async-signal-safe.
    unsafe { signal_hook_registry::register(libc::SIGUSR1, access_writer::request_reopen) }
        .map_err(LogError::Signal)?;
    // SAFETY: registering a plain `extern "C" fn` with no arguments.
    if unsafe { libc::atexit(flush_access_log_at_exit) } != 0 {
        tracing::warn!(
            "cannot register the exit hook; access-log lines queued at exit may be lost"
        );
    }
    Ok(())
}

/// Writes out the access-log lines still queued when the process exits
/// (`std::process::exit` at the end of a SIGTERM drain, or `main` returning).
extern "C" fn flush_access_log_at_exit() {
    if !access::flush(EXIT_FLUSH) {
        use std::io::Write;
        // (standard error gone: nowhere to say it)
        let _ = writeln!(
            std::io::stderr(),
            "laneway: the access log was not written out within {EXIT_FLUSH:?} at exit; its last lines may be lost"
        );
    }
}

/// Status classes used as the `class` label, indexed by `status / 100 - 1`.
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Index into [`STATUS_CLASSES`] for a status code.
pub fn class_index(status: u16) -> usize {
    (status / 100).clamp(1, 5) as usize - 1
}

/// Why laneway answered a request itself: the `reason` label of
/// `laneway_local_responses_total`, children resolved at start.
pub const LOCAL_REASONS: [&str; 14] = [
    "not_found",
    "lane_switch",
    "unknown_lane",
    "return",
    "redirect",
    "no_instance",
    "strict",
    "bad_request",
    "upstream_error",
    "free_entry",
    "body_too_large",
    "loop",
    "header_timeout",
    "other",
];

/// Where a request named a lane that does not exist: the `source` label
/// of `laneway_unknown_lane_total`, children resolved at start.
pub const UNKNOWN_LANE_SOURCES: [&str; 4] = ["hostname", "header", "baggage", "cookie"];

/// Why a request was sent upstream again: the `reason` label of
/// `laneway_upstream_retries_total`, children resolved at start.
pub const RETRY_REASONS: [&str; 2] = ["connect", "read"];

/// Every laneway metric family.
pub struct Metrics {
    pub registry: Registry,
    /// Requests by the lane that asked, and status class.
    pub lane_requests: IntCounterVec,
    /// Requests proxied to a (service, version), by status class.
    pub upstream_requests: IntCounterVec,
    /// Time from sending the request upstream to the end of the response.
    pub upstream_duration: HistogramVec,
    /// Whole-request latency seen by the client, by the lane that asked.
    pub request_duration: HistogramVec,
    /// Failed connection attempts to instances of a (service, version).
    pub upstream_connect_errors: IntCounterVec,
    /// Requests answered without an upstream: by reason (see
    /// [`LOCAL_REASONS`]; `loop` is a 508, `header_timeout` a 408).
    pub local_responses: IntCounterVec,
    local_by_reason: Vec<IntCounter>,
    /// Requests naming a lane that does not exist, by where they named it
    /// ([`UNKNOWN_LANE_SOURCES`]).
    pub unknown_lanes: IntCounterVec,
    unknown_by_source: Vec<IntCounter>,
    pub snapshot_swaps: IntCounter,
    pub snapshot_build_seconds: Histogram,
    pub snapshot_generation: IntGauge,
    pub snapshot_timestamp: IntGauge,
    /// Rules-file reloads that failed and left the last good rules in place.
    pub rules_errors: IntCounter,
    pub rules_reloads: IntCounter,
    pub instances: IntGaugeVec,
    pub lanes: IntGauge,
    /// Admin API requests rejected as bad input, by endpoint.
    pub admin_rejects: IntCounterVec,
    /// Passive ejections of an instance, by service and version.
    pub upstream_ejections: IntCounterVec,
    /// 1 when an instance takes traffic, 0 when an active check or a
    /// passive ejection holds it out (by service, version, instance).
    pub upstream_health: InstanceHealthGauge,
    /// Active check results by service and `result` (`pass`, `fail`).
    pub health_checks: IntCounterVec,
    /// Requests sent upstream again, by reason (`connect`, `read`).
    pub upstream_retries: IntCounterVec,
    retries_by_reason: Vec<IntCounter>,
    /// Client connections open on the data plane.
    pub active_connections: IntGauge,
    /// Client connections closed at once beyond `[proxy] max_connections`.
    pub connections_shed: IntCounter,
    /// Seconds since the serving snapshot was built (set when scraped).
    pub snapshot_age: Gauge,
    /// Seconds since discovery last heard from its source (0 in embedded
    /// mode, where the registry is in-process).
    pub discovery_staleness: Gauge,
    /// HTTPS listeners and certificates.
    pub tls: TlsMetrics,
    /// Access-log lines dropped because the writer fell behind.
    pub access_log_dropped: IntCounter,
}

/// What TLS termination counts: handshakes by negotiated protocol, failed
/// handshakes by reason, certificate (re)loads and their errors.
pub struct TlsMetrics {
    pub handshakes: IntCounterVec,
    pub handshake_errors: IntCounterVec,
    pub cert_reloads: IntCounter,
    pub cert_errors: IntCounter,
    pub certificates: IntGauge,
    /// `laneway_tls_handshakes_total` children: `h2`, `http/1.1`, `none`.
    pub by_protocol: [IntCounter; 3],
    /// `laneway_tls_handshake_errors_total` children, see [`TLS_ERRORS`].
    pub by_error: [IntCounter; 4],
    /// `CONNECT` requests on the data plane, by [`CONNECT_RESULTS`].
    pub connects: IntCounterVec,
    connect_by_result: [IntCounter; 6],
}

/// The `result` label of `laneway_connect_total`: `tunnel` (answered 200,
/// TLS terminated by laneway), or why the CONNECT was refused.
pub const CONNECT_RESULTS: [&str; 6] = [
    "tunnel",
    "not_entry",
    "port",
    "not_served",
    "no_certificate",
    "bad_target",
];

/// The `reason` label of `laneway_tls_handshake_errors_total`.
pub const TLS_ERRORS: [&str; 4] = ["timeout", "protocol", "io", "no_certificate"];

impl TlsMetrics {
    fn new() -> TlsMetrics {
        let handshakes = IntCounterVec::new(
            Opts::new(
                "laneway_tls_handshakes_total",
                "TLS handshakes completed, by the protocol ALPN chose",
            ),
            &["protocol"],
        )
        .expect("metric definition");
        let handshake_errors = IntCounterVec::new(
            Opts::new(
                "laneway_tls_handshake_errors_total",
                "TLS handshakes that failed, by reason",
            ),
            &["reason"],
        )
        .expect("metric definition");
        let connects = IntCounterVec::new(
            Opts::new(
                "laneway_connect_total",
                "CONNECT requests on lane entries: tunnels opened, or why refused",
            ),
            &["result"],
        )
        .expect("metric definition");
        TlsMetrics {
            connect_by_result: CONNECT_RESULTS.map(|r| connects.with_label_values(&[r])),
            connects,
            by_protocol: ["h2", "http/1.1", "none"].map(|p| handshakes.with_label_values(&[p])),
            by_error: TLS_ERRORS.map(|r| handshake_errors.with_label_values(&[r])),
            handshakes,
            handshake_errors,
            cert_reloads: IntCounter::new(
                "laneway_tls_cert_reloads_total",
                "Certificate directory (re)loads",
            )
            .expect("metric definition"),
            cert_errors: IntCounter::new(
                "laneway_tls_cert_errors_total",
                "Certificate pairs that failed to load; the previous certificate of the pair stays in use",
            )
            .expect("metric definition"),
            certificates: IntGauge::new(
                "laneway_tls_certificates",
                "Certificate pairs being served",
            )
            .expect("metric definition"),
        }
    }

    /// The handshake error counter for `reason` (one of [`TLS_ERRORS`]).
    pub fn error(&self, reason: &str) -> &IntCounter {
        let i = TLS_ERRORS.iter().position(|r| *r == reason).unwrap_or(1);
        &self.by_error[i]
    }

    /// The `CONNECT` counter for `result` (one of [`CONNECT_RESULTS`]).
    pub fn connect(&self, result: &str) -> &IntCounter {
        let i = CONNECT_RESULTS
            .iter()
            .position(|r| *r == result)
            .unwrap_or(CONNECT_RESULTS.len() - 1);
        &self.connect_by_result[i]
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let latency_buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let m = Metrics {
            lane_requests: IntCounterVec::new(
                Opts::new(
                    "laneway_requests_total",
                    "Requests by lane and status class",
                ),
                &["lane", "class"],
            )
            .expect("metric definition"),
            upstream_requests: IntCounterVec::new(
                Opts::new(
                    "laneway_upstream_requests_total",
                    "Requests proxied to a service version, by status class",
                ),
                &["service", "version", "class"],
            )
            .expect("metric definition"),
            upstream_duration: HistogramVec::new(
                HistogramOpts::new(
                    "laneway_upstream_duration_seconds",
                    "Upstream response time by service version",
                )
                .buckets(latency_buckets.clone()),
                &["service", "version"],
            )
            .expect("metric definition"),
            request_duration: HistogramVec::new(
                HistogramOpts::new(
                    "laneway_request_duration_seconds",
                    "Whole request time as seen by the client, by lane",
                )
                .buckets(latency_buckets),
                &["lane"],
            )
            .expect("metric definition"),
            upstream_connect_errors: IntCounterVec::new(
                Opts::new(
                    "laneway_upstream_connect_errors_total",
                    "Failed connection attempts to a service version's instances",
                ),
                &["service", "version"],
            )
            .expect("metric definition"),
            local_responses: IntCounterVec::new(
                Opts::new(
                    "laneway_local_responses_total",
                    "Requests answered by laneway itself, by reason",
                ),
                &["reason"],
            )
            .expect("metric definition"),
            local_by_reason: Vec::new(),
            unknown_lanes: IntCounterVec::new(
                Opts::new(
                    "laneway_unknown_lane_total",
                    "Requests naming a lane that does not exist, by where they named it",
                ),
                &["source"],
            )
            .expect("metric definition"),
            unknown_by_source: Vec::new(),
            snapshot_swaps: IntCounter::new(
                "laneway_snapshot_swaps_total",
                "Snapshots compiled and swapped in",
            )
            .expect("metric definition"),
            snapshot_build_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "laneway_snapshot_build_seconds",
                    "Time to compile one snapshot",
                )
                .buckets(vec![
                    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0,
                ]),
            )
            .expect("metric definition"),
            snapshot_generation: IntGauge::new(
                "laneway_snapshot_generation",
                "Generation of the snapshot being served",
            )
            .expect("metric definition"),
            snapshot_timestamp: IntGauge::new(
                "laneway_snapshot_timestamp_seconds",
                "Unix time the served snapshot was built",
            )
            .expect("metric definition"),
            rules_errors: IntCounter::new(
                "laneway_rules_errors_total",
                "Rules reloads rejected; the last good rules stay in place",
            )
            .expect("metric definition"),
            rules_reloads: IntCounter::new(
                "laneway_rules_reloads_total",
                "Rules files loaded successfully",
            )
            .expect("metric definition"),
            instances: IntGaugeVec::new(
                Opts::new("laneway_instances", "Registered instances by health"),
                &["health"],
            )
            .expect("metric definition"),
            lanes: IntGauge::new("laneway_lanes", "Lanes, baseline included")
                .expect("metric definition"),
            admin_rejects: IntCounterVec::new(
                Opts::new(
                    "laneway_admin_rejected_total",
                    "Admin API requests rejected as bad input",
                ),
                &["endpoint"],
            )
            .expect("metric definition"),
            upstream_ejections: IntCounterVec::new(
                Opts::new(
                    "laneway_upstream_ejections_total",
                    "Instances ejected after consecutive failed requests",
                ),
                &["service", "version"],
            )
            .expect("metric definition"),
            upstream_health: InstanceHealthGauge::new(),
            health_checks: IntCounterVec::new(
                Opts::new(
                    "laneway_health_checks_total",
                    "Active health check results by service",
                ),
                &["service", "result"],
            )
            .expect("metric definition"),
            upstream_retries: IntCounterVec::new(
                Opts::new(
                    "laneway_upstream_retries_total",
                    "Requests sent upstream again, by reason",
                ),
                &["reason"],
            )
            .expect("metric definition"),
            retries_by_reason: Vec::new(),
            active_connections: IntGauge::new(
                "laneway_active_connections",
                "Client connections open on the data plane",
            )
            .expect("metric definition"),
            connections_shed: IntCounter::new(
                "laneway_connections_shed_total",
                "Client connections closed at once because [proxy] max_connections were open",
            )
            .expect("metric definition"),
            snapshot_age: Gauge::new(
                "laneway_snapshot_age_seconds",
                "Seconds since the serving snapshot was built",
            )
            .expect("metric definition"),
            discovery_staleness: Gauge::new(
                "laneway_discovery_staleness_seconds",
                "Seconds since discovery last heard from its source (0 when embedded)",
            )
            .expect("metric definition"),
            tls: TlsMetrics::new(),
            access_log_dropped: ACCESS_LOG_DROPPED.clone(),
            registry,
        };
        m.register_all();
        let mut m = m;
        m.local_by_reason = LOCAL_REASONS
            .iter()
            .map(|r| m.local_responses.with_label_values(&[r]))
            .collect();
        m.unknown_by_source = UNKNOWN_LANE_SOURCES
            .iter()
            .map(|r| m.unknown_lanes.with_label_values(&[r]))
            .collect();
        m.retries_by_reason = RETRY_REASONS
            .iter()
            .map(|r| m.upstream_retries.with_label_values(&[r]))
            .collect();
        m
    }

    /// The counter of local responses for `reason` (one of
    /// [`LOCAL_REASONS`]; anything else counts as `other`).
    pub fn local_response(&self, reason: &str) -> &IntCounter {
        let i = LOCAL_REASONS
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(LOCAL_REASONS.len() - 1);
        &self.local_by_reason[i]
    }

    /// The counter of requests naming an unknown lane in `source` (one of
    /// [`UNKNOWN_LANE_SOURCES`]; anything else counts as `cookie`).
    pub fn unknown_lane(&self, source: &str) -> &IntCounter {
        let i = UNKNOWN_LANE_SOURCES
            .iter()
            .position(|r| *r == source)
            .unwrap_or(UNKNOWN_LANE_SOURCES.len() - 1);
        &self.unknown_by_source[i]
    }

    /// The retry counter for `reason`: 0 `connect`, 1 `read`.
    pub fn retry(&self, reason: usize) -> &IntCounter {
        &self.retries_by_reason[reason.min(RETRY_REASONS.len() - 1)]
    }

    fn register_all(&self) {
        let r = &self.registry;
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(self.lane_requests.clone()),
            Box::new(self.upstream_requests.clone()),
            Box::new(self.upstream_duration.clone()),
            Box::new(self.request_duration.clone()),
            Box::new(self.upstream_connect_errors.clone()),
            Box::new(self.local_responses.clone()),
            Box::new(self.unknown_lanes.clone()),
            Box::new(self.snapshot_swaps.clone()),
            Box::new(self.snapshot_build_seconds.clone()),
            Box::new(self.snapshot_generation.clone()),
            Box::new(self.snapshot_timestamp.clone()),
            Box::new(self.rules_errors.clone()),
            Box::new(self.rules_reloads.clone()),
            Box::new(self.instances.clone()),
            Box::new(self.lanes.clone()),
            Box::new(self.admin_rejects.clone()),
            Box::new(self.upstream_ejections.clone()),
            Box::new(self.upstream_health.clone()),
            Box::new(self.health_checks.clone()),
            Box::new(self.upstream_retries.clone()),
            Box::new(self.active_connections.clone()),
            Box::new(self.connections_shed.clone()),
            Box::new(self.snapshot_age.clone()),
            Box::new(self.discovery_staleness.clone()),
            Box::new(self.tls.handshakes.clone()),
            Box::new(self.tls.handshake_errors.clone()),
            Box::new(self.tls.cert_reloads.clone()),
            Box::new(self.tls.cert_errors.clone()),
            Box::new(self.tls.certificates.clone()),
            Box::new(self.tls.connects.clone()),
            Box::new(self.access_log_dropped.clone()),
        ];
        for c in collectors {
            r.register(c).expect("metric names are unique");
        }
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        let encoder = prometheus::TextEncoder::new();
        encoder
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# error encoding metrics: {e}\n"))
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Pre-resolved counters for a fixed label prefix, one per status class.
#[derive(Clone)]
pub struct ClassCounters(pub [IntCounter; 5]);

impl Metrics {
    /// Removes a lane's series (requests by class, request duration).
    pub fn forget_lane(&self, lane: &str) {
        for class in STATUS_CLASSES {
            let _ = self.lane_requests.remove_label_values(&[lane, class]);
        }
        let _ = self.request_duration.remove_label_values(&[lane]);
    }
}

impl ClassCounters {
    pub fn new(vec: &IntCounterVec, prefix: &[&str]) -> ClassCounters {
        let mut labels: Vec<&str> = prefix.to_vec();
        labels.push("");
        let last = labels.len() - 1;
        ClassCounters(STATUS_CLASSES.map(|class| {
            labels[last] = class;
            vec.with_label_values(&labels)
        }))
    }

    pub fn inc(&self, status: u16) {
        self.0[class_index(status)].inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_directive_for_the_access_target_turns_it_off() {
        for on in [
            "info",
            "warn",
            "error",
            "off",
            "laneway=warn",
            "laneway::access=info",
        ] {
            assert!(!filter_turns_off_access(on), "{on}");
        }
        for off in [
            "laneway::access=off",
            "info,laneway::access=OFF",
            "debug, laneway::access = warn",
            "laneway::access=info,laneway::access=off",
        ] {
            assert!(filter_turns_off_access(off), "{off}");
        }
        assert!(!filter_turns_off_access(
            "laneway::access=off,laneway::access=info"
        ));
    }

    #[test]
    fn the_dropped_lines_counter_is_in_every_registry() {
        let (a, b) = (Metrics::new(), Metrics::new());
        a.access_log_dropped.inc();
        for m in [&a, &b] {
            assert!(m.render().contains("laneway_access_log_dropped_total"));
        }
        assert_eq!(a.access_log_dropped.get(), b.access_log_dropped.get());
    }
}
