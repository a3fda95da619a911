//! The embedded registry's check runner: runs the HTTP, TCP and TTL checks
//! registered through the Consul agent API as a Consul agent does, and
//! removes instances whose `DeregisterCriticalServiceAfter` has passed.
//! Control plane only (a task on the control runtime, embedded mode).
//!
//! - HTTP and TCP checks: one tokio task per check. The first run comes
//!   after a random part of `Interval` (checks registered together spread
//!   out), then one run per `Interval`, each bounded by `Timeout`. At most
//!   [`MAX_PROBES`] probes run at once. HTTP: `Method` (default GET),
//!   `Header`, `Body`, `TLSSkipVerify`; 2xx is passing, 429 warning,
//!   anything else or no answer critical; redirects are followed, as Go's
//!   client does. TCP: a connect is passing.
//! - `SuccessBeforePassing` / `FailuresBeforeWarning` /
//!   `FailuresBeforeCritical` apply as in Consul's `StatusHandler`
//!   ([`Thresholds`]).
//! - TTL checks turn critical (`TTL expired`) once their TTL has passed
//!   without an update ([`Registry::ttl_deadline`](super::registry::Registry::ttl_deadline)).
//! - A result goes through the registry like a TTL update: written to disk
//!   only when the status changes, and then the snapshot is rebuilt, so
//!   health-aware fallback follows the checks.
//! - `DeregisterCriticalServiceAfter`: an instance whose check has been
//!   critical that long (as seen by this runner, from the start of the
//!   process at the earliest) is deregistered. Unlike Consul, which raises
//!   the value to at least one minute and reaps every 30 s, laneway takes
//!   the value as given and looks every second.
//!
//! The set of running checks follows the registry: the runner wakes when
//! its index moves and starts, restarts (definition changed) or stops tasks.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn, Instrument};

use super::{CheckRun, CheckState, Health, Probe};
use crate::control::Control;

/// At most this many probes run at the same time.
pub const MAX_PROBES: usize = 32;
/// How much of an HTTP check's answer goes into its output (Consul: 4 KiB).
const OUTPUT_LIMIT: usize = 4096;
/// How often TTLs and `DeregisterCriticalServiceAfter` are looked at when
/// nothing else wakes the runner.
const TICK: Duration = Duration::from_secs(1);

/// Consul's `StatusHandler`: how many passes or failures in a row it takes
/// before a result is reported.
#[derive(Debug, Clone)]
pub struct Thresholds {
    success_before_passing: u32,
    failures_before_warning: u32,
    failures_before_critical: u32,
    successes: u32,
    failures: u32,
}

impl Thresholds {
    pub fn new(check: &CheckState) -> Thresholds {
        let spec = &check.spec;
        Thresholds {
            success_before_passing: spec.success_before_passing,
            failures_before_critical: spec.failures_before_critical,
            failures_before_warning: spec
                .failures_before_warning
                .unwrap_or(spec.failures_before_critical),
            successes: 0,
            failures: 0,
        }
    }

    /// The status to report for one result, or `None` while a threshold is
    /// not reached yet (the check keeps its status).
    pub fn observe(&mut self, result: Health) -> Option<Health> {
        if result == Health::Critical {
            self.failures += 1;
            self.successes = 0;
            if self.failures >= self.failures_before_critical {
                return Some(Health::Critical);
            }
            if self.failures >= self.failures_before_warning {
                return Some(Health::Warning);
            }
            None
        } else {
            self.successes += 1;
            self.failures = 0;
            (self.successes >= self.success_before_passing).then_some(result)
        }
    }
}

/// The HTTP clients checks use: one that verifies certificates, one for
/// `TLSSkipVerify`.
#[derive(Clone)]
struct Clients {
    verify: reqwest::Client,
    skip_verify: reqwest::Client,
}

impl Clients {
    fn new() -> Result<Clients, reqwest::Error> {
        let build = |skip: bool| {
            reqwest::Client::builder()
                .no_proxy()
                // Consul's checks do not keep connections alive.
                .pool_max_idle_per_host(0)
                .danger_accept_invalid_certs(skip)
                .user_agent("Consul Health Check")
                .build()
        };
        Ok(Clients {
            verify: build(false)?,
            skip_verify: build(true)?,
        })
    }
}

struct Running {
    /// The definition the task runs; a different one restarts it.
    def: CheckState,
    handle: JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// Runs the checks of the embedded registry until the process ends.
pub async fn run(control: Arc<Control>) {
    let clients = match Clients::new() {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "cannot build the HTTP client for checks; HTTP checks stay as they are");
            return;
        }
    };
    let permits = Arc::new(Semaphore::new(MAX_PROBES));
    let mut running: HashMap<String, Running> = HashMap::new();
    let mut critical_since: HashMap<String, Instant> = HashMap::new();
    let mut changes = control.registry.lock().await.subscribe();
    loop {
        changes.mark_unchanged();
        let (checks, next_ttl) = {
            let reg = control.registry.lock().await;
            let mut checks = Vec::new();
            let mut next_ttl: Option<Instant> = None;
            for inst in reg.catalog().instances {
                for c in &inst.checks {
                    if c.ttl_ms.is_some() {
                        if let Some(d) = reg.ttl_deadline(&c.id) {
                            if c.status != Health::Critical || d > Instant::now() {
                                next_ttl = Some(next_ttl.map_or(d, |n| n.min(d)));
                            }
                        }
                    }
                    checks.push((inst.id.clone(), c.clone()));
                }
            }
            (checks, next_ttl)
        };
        start_and_stop(&control, &clients, &permits, &mut running, &checks);
        expire_ttls(&control, &checks).await;
        reap(&control, &checks, &mut critical_since).await;
        let now = Instant::now();
        // Never sooner than a few milliseconds: a TTL that cannot be
        // recorded (a store error) must not make this loop spin.
        let wake = next_ttl
            .map_or(now + TICK, |d| d.min(now + TICK))
            .max(now + Duration::from_millis(20));
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            () = tokio::time::sleep_until(wake.into()) => {}
        }
    }
}

fn start_and_stop(
    control: &Arc<Control>,
    clients: &Clients,
    permits: &Arc<Semaphore>,
    running: &mut HashMap<String, Running>,
    checks: &[(String, CheckState)],
) {
    let mut wanted: HashMap<&str, &CheckState> = HashMap::new();
    for (_, c) in checks {
        if c.spec.run.is_some() {
            wanted.insert(&c.id, c);
        }
    }
    running.retain(|id, r| wanted.get(id.as_str()).is_some_and(|c| same_def(c, &r.def)));
    for (id, c) in wanted {
        if running.contains_key(id) {
            continue;
        }
        let Some(run) = c.spec.run.clone() else {
            continue;
        };
        let span = tracing::info_span!("check", check = %id);
        let handle = tokio::spawn(
            probe_loop(
                control.clone(),
                clients.clone(),
                permits.clone(),
                id.to_owned(),
                run,
                Thresholds::new(c),
            )
            .instrument(span),
        );
        running.insert(
            id.to_owned(),
            Running {
                def: c.clone(),
                handle,
            },
        );
    }
}

/// Same definition, whatever the status and output.
fn same_def(a: &CheckState, b: &CheckState) -> bool {
    a.id == b.id && a.spec == b.spec
}

async fn probe_loop(
    control: Arc<Control>,
    clients: Clients,
    permits: Arc<Semaphore>,
    id: String,
    run: CheckRun,
    mut thresholds: Thresholds,
) {
    let interval = Duration::from_millis(run.interval_ms.max(1));
    let timeout = Duration::from_millis(run.timeout_ms.max(1));
    tokio::time::sleep(interval.mul_f64(fastrand::f64())).await;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (result, output) = {
            let Ok(_permit) = permits.acquire().await else {
                return;
            };
            probe(&clients, &run.probe, timeout).await
        };
        let Some(status) = thresholds.observe(result) else {
            debug!(result = %result, "check result below its threshold; status kept");
            continue;
        };
        if !report(&control, &id, status, output).await {
            return;
        }
    }
}

/// Records a check's status; false once the check is gone.
async fn report(control: &Control, id: &str, status: Health, output: String) -> bool {
    let updated = control
        .registry
        .lock()
        .await
        .update_check(id, status, Some(output));
    match updated {
        Ok(true) => {
            info!(check = %id, status = %status, "check status changed");
            control.changed();
            true
        }
        Ok(false) => true,
        Err(super::registry::RegistryError::Store(e)) => {
            warn!(check = %id, error = %e, "cannot record a check result");
            true
        }
        Err(_) => false,
    }
}

/// One run of a check: its result and Consul-style output.
async fn probe(clients: &Clients, probe: &Probe, timeout: Duration) -> (Health, String) {
    match probe {
        Probe::Tcp { address } => {
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address.as_str()))
                .await
            {
                Ok(Ok(_)) => (Health::Passing, format!("TCP connect {address}: Success")),
                Ok(Err(e)) => (Health::Critical, format!("dial tcp {address}: {e}")),
                Err(_) => (
                    Health::Critical,
                    format!("dial tcp {address}: i/o timeout after {timeout:?}"),
                ),
            }
        }
        Probe::Http {
            url,
            method,
            header,
            body,
            tls_skip_verify,
        } => {
            let client = match tls_skip_verify {
                true => &clients.skip_verify,
                false => &clients.verify,
            };
            let Ok(m) = reqwest::Method::from_bytes(method.as_bytes()) else {
                return (Health::Critical, format!("invalid HTTP method {method:?}"));
            };
            let mut req = client
                .request(m, url.as_str())
                .timeout(timeout)
                .header(reqwest::header::ACCEPT, "text/plain, text/*, */*");
            for (name, values) in header {
                for v in values {
                    req = req.header(name.as_str(), v.as_str());
                }
            }
            if !body.is_empty() {
                req = req.body(body.clone());
            }
            let mut resp = match req.send().await {
                Ok(r) => r,
                Err(e) => return (Health::Critical, format!("HTTP {method} {url}: {e}")),
            };
            let status = resp.status();
            let mut text = Vec::new();
            while text.len() < OUTPUT_LIMIT {
                match tokio::time::timeout(timeout, resp.chunk()).await {
                    Ok(Ok(Some(chunk))) => text.extend_from_slice(&chunk),
                    _ => break,
                }
            }
            text.truncate(OUTPUT_LIMIT);
            let output = format!(
                "HTTP {method} {url}: {} {} Output: {}",
                status.as_u16(),
                status.canonical_reason().unwrap_or(""),
                String::from_utf8_lossy(&text)
            );
            let health = if status.is_success() {
                Health::Passing
            } else if status.as_u16() == 429 {
                Health::Warning
            } else {
                Health::Critical
            };
            (health, output)
        }
    }
}

/// Turns TTL checks whose TTL passed without an update critical.
async fn expire_ttls(control: &Control, checks: &[(String, CheckState)]) {
    let now = Instant::now();
    let mut changed = false;
    {
        let mut reg = control.registry.lock().await;
        for (_, c) in checks.iter().filter(|(_, c)| c.ttl_ms.is_some()) {
            let Some(deadline) = reg.ttl_deadline(&c.id) else {
                continue;
            };
            let Some((_, current)) = reg.find_check(&c.id) else {
                continue;
            };
            if deadline > now || current.status == Health::Critical {
                continue;
            }
            let output = match current.output.as_str() {
                "" => "TTL expired".to_owned(),
                last => format!("TTL expired (last output before timeout follows): {last}"),
            };
            match reg.update_check(&c.id, Health::Critical, Some(output)) {
                Ok(true) => {
                    info!(check = %c.id, "TTL expired; check critical");
                    changed = true;
                }
                Ok(false) => {}
                Err(e) => warn!(check = %c.id, error = %e, "cannot record an expired TTL"),
            }
        }
    }
    if changed {
        control.changed();
    }
}

/// Deregisters instances whose `DeregisterCriticalServiceAfter` passed.
async fn reap(
    control: &Control,
    checks: &[(String, CheckState)],
    critical_since: &mut HashMap<String, Instant>,
) {
    let now = Instant::now();
    let mut due = Vec::new();
    critical_since.retain(|id, _| {
        checks
            .iter()
            .any(|(_, c)| c.id == *id && c.status == Health::Critical)
    });
    for (instance, c) in checks {
        let Some(after) = c.spec.deregister_after_ms else {
            continue;
        };
        if c.status != Health::Critical {
            continue;
        }
        let since = *critical_since.entry(c.id.clone()).or_insert(now);
        if now.duration_since(since) >= Duration::from_millis(after) && !due.contains(instance) {
            due.push(instance.clone());
        }
    }
    if due.is_empty() {
        return;
    }
    let mut removed = false;
    for id in &due {
        match control.registry.lock().await.deregister(id) {
            Ok(true) => {
                info!(instance = %id, "check critical for longer than DeregisterCriticalServiceAfter; instance deregistered");
                removed = true;
            }
            Ok(false) => {}
            Err(e) => warn!(instance = %id, error = %e, "cannot deregister a critical instance"),
        }
    }
    if removed {
        control.reconcile_auto_lanes().await;
        control.changed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::{CheckKind, CheckSpec};

    fn check(success: u32, warn: Option<u32>, critical: u32) -> CheckState {
        CheckState {
            id: "c".into(),
            name: "c".into(),
            kind: CheckKind::Http,
            status: Health::Critical,
            output: String::new(),
            ttl_ms: None,
            spec: CheckSpec {
                success_before_passing: success,
                failures_before_warning: warn,
                failures_before_critical: critical,
                ..Default::default()
            },
        }
    }

    #[test]
    fn no_thresholds_report_every_result() {
        let mut t = Thresholds::new(&check(0, None, 0));
        assert_eq!(t.observe(Health::Passing), Some(Health::Passing));
        assert_eq!(t.observe(Health::Warning), Some(Health::Warning));
        assert_eq!(t.observe(Health::Critical), Some(Health::Critical));
    }

    #[test]
    fn success_before_passing_needs_passes_in_a_row() {
        let mut t = Thresholds::new(&check(3, None, 0));
        assert_eq!(t.observe(Health::Passing), None);
        assert_eq!(t.observe(Health::Passing), None);
        assert_eq!(t.observe(Health::Critical), Some(Health::Critical));
        assert_eq!(t.observe(Health::Passing), None, "the count starts over");
        assert_eq!(t.observe(Health::Passing), None);
        assert_eq!(t.observe(Health::Passing), Some(Health::Passing));
    }

    #[test]
    fn failures_go_through_warning_to_critical() {
        let mut t = Thresholds::new(&check(0, Some(1), 3));
        assert_eq!(t.observe(Health::Critical), Some(Health::Warning));
        assert_eq!(t.observe(Health::Critical), Some(Health::Warning));
        assert_eq!(t.observe(Health::Critical), Some(Health::Critical));
        assert_eq!(t.observe(Health::Passing), Some(Health::Passing));
        let mut t = Thresholds::new(&check(0, None, 2));
        assert_eq!(t.observe(Health::Critical), None);
        assert_eq!(t.observe(Health::Critical), Some(Health::Critical));
    }

    #[tokio::test]
    async fn http_probe_maps_statuses_like_consul() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = vec![0u8; 4096];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let req = String::from_utf8_lossy(&buf[..n]).to_string();
                    let code = req
                        .split_whitespace()
                        .nth(1)
                        .and_then(|p| p.trim_start_matches('/').parse::<u16>().ok())
                        .unwrap_or(200);
                    let seen_header = req.to_ascii_lowercase().contains("x-probe: yes");
                    let body = format!("header={seen_header}");
                    let resp = format!(
                        "HTTP/1.1 {code} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
        let clients = Clients::new().expect("clients");
        let http = |code: u16| Probe::Http {
            url: format!("http://{addr}/{code}"),
            method: "GET".into(),
            header: [("X-Probe".to_owned(), vec!["yes".to_owned()])].into(),
            body: String::new(),
            tls_skip_verify: false,
        };
        let t = Duration::from_secs(5);
        let (h, out) = probe(&clients, &http(200), t).await;
        assert_eq!(h, Health::Passing, "{out}");
        assert!(out.contains(": 200 OK Output: header=true"), "{out}");
        assert_eq!(probe(&clients, &http(204), t).await.0, Health::Passing);
        assert_eq!(probe(&clients, &http(429), t).await.0, Health::Warning);
        assert_eq!(probe(&clients, &http(500), t).await.0, Health::Critical);
        assert_eq!(probe(&clients, &http(404), t).await.0, Health::Critical);
        let tcp = Probe::Tcp {
            address: addr.to_string(),
        };
        assert_eq!(probe(&clients, &tcp, t).await.0, Health::Passing);
    }

    #[tokio::test]
    async fn tcp_probe_on_a_closed_port_is_critical() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let clients = Clients::new().expect("clients");
        let (h, out) = probe(
            &clients,
            &Probe::Tcp {
                address: format!("127.0.0.1:{port}"),
            },
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(h, Health::Critical);
        assert!(out.starts_with("dial tcp 127.0.0.1:"), "{out}");
    }
}
