//! Registration of this laneway instance in Consul, so the farm is visible
//! (service `laneway`, data and admin addresses, an HTTP check on the LVS
//! health endpoint), and its deregistration on shutdown. Control plane only.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use tracing::{info, warn};

use super::client::ConsulError;
use super::pace::Backoff;
use super::ConsulDiscovery;
use crate::config::Config;

/// This instance's registration.
#[derive(Debug, Clone)]
pub struct SelfRegistration {
    pub id: String,
    pub body: serde_json::Value,
}

impl SelfRegistration {
    /// The registration body: ID `<service_name>-<ip>-<port>`, the first
    /// data listener as `Address`/`Port`, the admin address in `Meta`, and
    /// an HTTP check on `/lvs/health` of the admin API.
    pub fn new(config: &Config) -> Option<SelfRegistration> {
        let consul = config.discovery.consul.as_ref()?;
        if !consul.register_self {
            return None;
        }
        let data = config.proxy.listen.first().copied()?;
        let admin = config.admin.listen;
        let ip: IpAddr = consul.advertise.unwrap_or_else(|| advertised(data, admin));
        let admin_ip = if admin.ip().is_unspecified() {
            ip
        } else {
            admin.ip()
        };
        let id = format!("{}-{}-{}", consul.service_name, ip, data.port());
        let check_url = format!(
            "http://{}/lvs/health",
            SocketAddr::new(admin_ip, admin.port())
        );
        let body = json!({
            "ID": id,
            "Name": consul.service_name,
            "Address": ip.to_string(),
            "Port": data.port(),
            "Tags": ["laneway"],
            "Meta": {
                "admin": SocketAddr::new(admin_ip, admin.port()).to_string(),
                "laneway_version": env!("CARGO_PKG_VERSION"),
            },
            "Check": {
                "Name": "laneway LVS health",
                "HTTP": check_url,
                "Interval": "5s",
                "Timeout": "2s",
                "DeregisterCriticalServiceAfter": "10m",
            },
        });
        Some(SelfRegistration { id, body })
    }
}

fn advertised(data: SocketAddr, admin: SocketAddr) -> IpAddr {
    if !data.ip().is_unspecified() {
        data.ip()
    } else if !admin.ip().is_unspecified() {
        admin.ip()
    } else {
        IpAddr::from([127, 0, 0, 1])
    }
}

impl ConsulDiscovery {
    /// Registers this instance, retrying with backoff until it succeeds.
    pub async fn register_self(&self, reg: &SelfRegistration) {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        loop {
            self.metrics.requests.with_label_values(&["register"]).inc();
            match self.put_registration(reg).await {
                Ok(()) => {
                    info!(id = %reg.id, "registered this laneway instance in Consul");
                    return;
                }
                Err(e) => {
                    let wait = backoff.next_wait();
                    self.metrics
                        .errors
                        .with_label_values(&["register", e.kind()])
                        .inc();
                    if backoff.failures() == 1 {
                        warn!(id = %reg.id, error = %e, "cannot register this laneway instance in Consul yet; retrying");
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    async fn put_registration(&self, reg: &SelfRegistration) -> Result<(), ConsulError> {
        let body = serde_json::to_vec(&reg.body).map_err(|e| ConsulError::Decode {
            path: "/v1/agent/service/register".into(),
            detail: e.to_string(),
        })?;
        self.client
            .write(Method::PUT, "/v1/agent/service/register", &[], body)
            .await
            .map(|_| ())
    }

    /// Deregisters this instance (best effort, bounded by `timeout`).
    pub async fn deregister_self(&self, reg: &SelfRegistration, timeout: Duration) {
        let path = format!("/v1/agent/service/deregister/{}", reg.id);
        match tokio::time::timeout(
            timeout,
            self.client.write(Method::PUT, &path, &[], Vec::new()),
        )
        .await
        {
            Ok(Ok(_)) => info!(id = %reg.id, "deregistered this laneway instance from Consul"),
            Ok(Err(e)) => {
                warn!(id = %reg.id, error = %e, "cannot deregister this laneway instance from Consul")
            }
            Err(_) => warn!(id = %reg.id, "deregistering from Consul timed out"),
        }
    }
}
