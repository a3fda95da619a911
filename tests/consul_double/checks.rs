//! Health checks that run by themselves, as a Consul agent runs them:
//! TTL checks turn critical when no heartbeat arrives in time; HTTP checks
//! answer 2xx passing, 429 warning, anything else critical; TCP checks pass
//! when a connect succeeds. Each runs as a task on the double's runtime,
//! first after a random stagger within its interval.
//!
//! Also the agent's housekeeping: reaping services whose check stayed
//! critical past `DeregisterCriticalServiceAfter`, and expiring sessions.
//!
//! Only a status change reaches the catalog (and moves the index); a new
//! output with the same status does not, as Consul defers those syncs.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::agent;
use super::duration::format_go;
use super::session;
use super::shared::{Shared, Tx};
use super::state::{Check, Key, Probe, Status};

/// Consul keeps at most this much of a check's output.
const MAX_OUTPUT: usize = 4096;

/// Sets a check's status within a write; returns false if unchanged. A
/// check turning critical invalidates the sessions that depend on it.
pub fn apply_status(tx: &mut Tx<'_>, ckey: &Key, status: Status, output: Option<String>) -> bool {
    let Some(current) = tx.st.checks.get(ckey).map(|c| c.status) else {
        return false;
    };
    if current == status {
        return false;
    }
    let idx = tx.index();
    tx.st.set_status(ckey, status, output, idx);
    if status == Status::Critical {
        session::invalidate_for_check(tx.st, &ckey.0, &ckey.1, idx);
    }
    true
}

/// Sets a check's status from a test control or a runner. `None` if the
/// check does not exist, else whether the status changed.
pub fn set_status(sh: &Shared, ckey: &Key, status: Status, output: Option<String>) -> Option<bool> {
    sh.write(|tx| {
        tx.st.checks.get(ckey)?;
        Some(apply_status(tx, ckey, status, output))
    })
}

/// A TTL heartbeat: new status and output, and a fresh deadline.
pub fn ttl_heartbeat(sh: &Shared, ckey: &Key, status: Status, output: String, ttl: Duration) {
    sh.write(|tx| {
        if let Some(c) = tx.st.checks.get_mut(ckey) {
            c.ttl_deadline = Some(std::time::Instant::now() + ttl);
        }
        apply_status(tx, ckey, status, Some(output));
    });
    // The TTL runner sleeps on the old deadline; let it see the new one.
    sh.wake();
}

pub fn start_runner(sh: &Arc<Shared>, check: &Check) {
    let ckey = (check.node.clone(), check.id.clone());
    let task = match (&check.probe, check.interval) {
        (Probe::Ttl(_), _) => sh.rt.spawn(ttl_runner(sh.clone(), ckey.clone())),
        (Probe::Http { .. } | Probe::Tcp(_), Some(interval)) => sh.rt.spawn(interval_runner(
            sh.clone(),
            ckey.clone(),
            check.probe.clone(),
            interval,
            check.timeout.unwrap_or(Duration::from_secs(10)),
        )),
        _ => return,
    };
    let old = sh
        .runners
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(ckey, task.abort_handle());
    if let Some(old) = old {
        old.abort();
    }
}

pub fn stop_runners(sh: &Shared, keys: &[Key]) {
    let mut runners = sh.runners.lock().unwrap_or_else(|p| p.into_inner());
    for k in keys {
        if let Some(task) = runners.remove(k) {
            task.abort();
        }
    }
}

async fn ttl_runner(sh: Arc<Shared>, ckey: Key) {
    let mut wake = sh.subscribe();
    loop {
        wake.borrow_and_update();
        let found = sh.lock().checks.get(&ckey).map(|c| c.ttl_deadline);
        let Some(deadline) = found else {
            return;
        };
        match deadline {
            // Expired already: wait for the next heartbeat.
            None => {
                if wake.changed().await.is_err() {
                    return;
                }
            }
            Some(d) if std::time::Instant::now() >= d => {
                sh.write(|tx| {
                    if let Some(c) = tx.st.checks.get_mut(&ckey) {
                        c.ttl_deadline = None;
                    }
                    apply_status(tx, &ckey, Status::Critical, Some("TTL expired".into()));
                });
            }
            Some(d) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(Instant::from_std(d)) => {}
                    _ = wake.changed() => {}
                }
            }
        }
    }
}

async fn interval_runner(
    sh: Arc<Shared>,
    ckey: Key,
    probe: Probe,
    interval: Duration,
    timeout: Duration,
) {
    let span = u64::try_from(interval.as_nanos())
        .unwrap_or(u64::MAX)
        .max(1);
    tokio::time::sleep(Duration::from_nanos(fastrand::u64(..span))).await;
    loop {
        let (status, output) = match &probe {
            Probe::Http {
                url,
                method,
                headers,
            } => probe_http(url, method, headers, timeout).await,
            Probe::Tcp(addr) => probe_tcp(addr, timeout).await,
            Probe::Ttl(_) | Probe::Serf => return,
        };
        if set_status(&sh, &ckey, status, Some(output)).is_none() {
            return;
        }
        tokio::time::sleep(interval).await;
    }
}

/// One HTTP check: `http://host[:port]/path` only (no TLS).
async fn probe_http(
    url: &str,
    method: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> (Status, String) {
    let Some((host, port, path)) = split_http_url(url) else {
        return (
            Status::Critical,
            format!("consul double: unsupported check URL {url:?}; only http://host[:port]/path"),
        );
    };
    let exchange = async {
        let mut stream = TcpStream::connect((host.as_str(), port)).await?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: Consul Health Check\r\n\
             Accept: text/plain, text/*, */*\r\nConnection: close\r\n"
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await?;
        read_answer(&mut stream).await
    };
    match tokio::time::timeout(timeout, exchange).await {
        Err(_) => (
            Status::Critical,
            format!(
                "{method} {url}: request timed out after {}",
                format_go(timeout)
            ),
        ),
        Ok(Err(e)) => (Status::Critical, format!("{method} {url}: {e}")),
        Ok(Ok((code, reason, body))) => {
            let status = match code {
                200..=299 => Status::Passing,
                429 => Status::Warning,
                _ => Status::Critical,
            };
            (
                status,
                format!("HTTP {method} {url}: {code} {reason} Output: {body}"),
            )
        }
    }
}

/// Reads a response's status line and up to [`MAX_OUTPUT`] bytes of body.
async fn read_answer(stream: &mut TcpStream) -> std::io::Result<(u16, String, String)> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 || buf.len() > 64 * 1024 {
            return Err(bad("connection closed before a complete response head"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    parts.next();
    let code: u16 = parts
        .next()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("malformed status line"))?;
    let reason = parts.next().unwrap_or("").to_string();
    let length = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok());
    let want = length.unwrap_or(usize::MAX).min(MAX_OUTPUT);
    let mut body = buf[head_end..].to_vec();
    while body.len() < want {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(want);
    Ok((code, reason, String::from_utf8_lossy(&body).into_owned()))
}

fn split_http_url(url: &str) -> Option<(String, u16, String)> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']')?;
        (
            h.to_string(),
            after.strip_prefix(':').map(str::parse).transpose().ok()?,
        )
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p.parse().ok()?)),
            None => (authority.to_string(), None),
        }
    };
    Some((host, port.unwrap_or(80), path.to_string()))
}

async fn probe_tcp(addr: &str, timeout: Duration) -> (Status, String) {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(_)) => (Status::Passing, format!("TCP connect {addr}: Success")),
        Ok(Err(e)) => (Status::Critical, format!("dial tcp {addr}: {e}")),
        Err(_) => (Status::Critical, format!("dial tcp {addr}: i/o timeout")),
    }
}

/// The agent's periodic chores, until the runtime stops.
pub async fn housekeeping(sh: Arc<Shared>) {
    let mut last_reap = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        session::expire_due(&sh);
        let (min_after, every) = *sh.reaper.lock().unwrap_or_else(|p| p.into_inner());
        if last_reap.elapsed() >= every {
            last_reap = Instant::now();
            reap_critical_services(&sh, min_after);
        }
    }
}

/// Deregisters every service with a check critical for longer than its
/// `DeregisterCriticalServiceAfter` (raised to `min_after`, as Consul
/// raises it to 1 minute).
fn reap_critical_services(sh: &Arc<Shared>, min_after: Duration) {
    let mut doomed: Vec<(String, String)> = sh
        .lock()
        .checks
        .values()
        .filter(|c| !c.service_id.is_empty())
        .filter(|c| match (c.deregister_after, c.critical_since) {
            (Some(after), Some(since)) => since.elapsed() >= after.max(min_after),
            _ => false,
        })
        .map(|c| (c.node.clone(), c.service_id.clone()))
        .collect();
    doomed.dedup();
    for (node, id) in doomed {
        agent::remove_service(sh, &node, &id);
    }
}
