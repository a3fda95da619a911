//! Active health checks: one tokio task per checked instance, on the
//! control runtime, probing over HTTP (`GET <path>`, 2xx/3xx pass; hyper's
//! HTTP/1 client on a fresh connection) or TCP (a connect passes) every
//! `interval`, each probe bounded by `timeout`. `fall` failures in a row take
//! the instance out, `rise` passes in a row bring it back; each flip wakes
//! [`super::run`] for a new snapshot. Instances start in (discovery already
//! says they are there); the first probe runs after a random part of the
//! interval, so checks of many instances spread out.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use prometheus::IntCounter;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn, Instrument};

use super::{UpstreamHealth, UpstreamState};
use crate::config::{ActiveCheck, CheckKind};
use crate::discovery::Instance;

/// The running checker tasks, by instance id.
#[derive(Default)]
pub(super) struct Checks {
    tasks: HashMap<Arc<str>, Task>,
}

struct Task {
    state: Arc<UpstreamState>,
    handle: JoinHandle<()>,
}

impl Drop for Task {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

impl Checks {
    /// Starts the check of `inst` if its service is checked and it runs
    /// none for this state yet; stops one it should not run.
    pub(super) fn ensure(
        &mut self,
        health: &UpstreamHealth,
        inst: &Instance,
        state: &Arc<UpstreamState>,
    ) {
        let check = health.config.check_for(&inst.service);
        let (Some(check), Some(addr)) = (check, state.addr) else {
            if !self.tasks.is_empty() {
                self.tasks.remove(&state.id);
            }
            return;
        };
        if self
            .tasks
            .get(&state.id)
            .is_some_and(|t| Arc::ptr_eq(&t.state, state))
        {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            warn!(instance = %inst.id, "no runtime to run health checks on");
            return;
        };
        let counters = [
            health
                .metrics
                .health_checks
                .with_label_values(&[&inst.service, "pass"]),
            health
                .metrics
                .health_checks
                .with_label_values(&[&inst.service, "fail"]),
        ];
        let span =
            tracing::info_span!("health_check", instance = %inst.id, service = %inst.service);
        let handle =
            rt.spawn(check_loop(check.clone(), addr, state.clone(), counters).instrument(span));
        self.tasks.insert(
            state.id.clone(),
            Task {
                state: state.clone(),
                handle,
            },
        );
    }

    pub(super) fn stop(&mut self, id: &str) {
        self.tasks.remove(id);
    }
}

async fn check_loop(
    check: ActiveCheck,
    addr: SocketAddr,
    state: Arc<UpstreamState>,
    counters: [IntCounter; 2],
) {
    let jitter = check.interval.mul_f64(fastrand::f64());
    tokio::time::sleep(jitter).await;
    let mut tick = tokio::time::interval(check.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut passes, mut fails) = (0u32, 0u32);
    loop {
        tick.tick().await;
        let result = match tokio::time::timeout(check.timeout, probe(&check.kind, addr)).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "no answer within {}",
                humantime::format_duration(check.timeout)
            )),
        };
        match result {
            Ok(()) => {
                counters[0].inc();
                passes += 1;
                fails = 0;
                if state.active_down() && passes >= check.rise {
                    info!(upstream = %addr, passes, "health check passes again; instance back in");
                    state.set_active_down(false, "");
                }
            }
            Err(why) => {
                counters[1].inc();
                debug!(upstream = %addr, error = %why, "health check failed");
                fails += 1;
                passes = 0;
                if !state.active_down() && fails >= check.fall {
                    warn!(upstream = %addr, fails, error = %why, "health check failing; instance taken out");
                    state.set_active_down(true, &why);
                }
            }
        }
    }
}

/// One probe: `Ok` when it passes, else why not.
async fn probe(kind: &CheckKind, addr: SocketAddr) -> Result<(), String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let path = match kind {
        CheckKind::Tcp => return Ok(()),
        CheckKind::Http { path } => path,
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("http: {e}"))?;
    let req = http::Request::get(path.as_str())
        .header(http::header::HOST, addr.to_string())
        .header(http::header::USER_AGENT, "laneway-health-check")
        .header(http::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    // Drive the connection and the request together, so that everything is
    // dropped (and the socket closed) when the probe ends or times out.
    let mut conn = std::pin::pin!(conn);
    let mut send = std::pin::pin!(sender.send_request(req));
    let resp = tokio::select! {
        r = &mut send => r,
        // the connection may end (Connection: close) before the response
        // is handed over; it is then ready
        r = &mut conn => match r {
            Ok(()) => send.await,
            Err(e) => return Err(format!("http: {e}")),
        },
    }
    .map_err(|e| format!("http: {e}"))?;
    let status = resp.status();
    if status.is_success() || status.is_redirection() {
        Ok(())
    } else {
        Err(format!("GET {path} answered {}", status.as_u16()))
    }
}
