//! ACLs, reduced to what a watcher meets: off by default; when a token is
//! set it is the one management token and the default policy is deny. The
//! token comes from `?token=`, `X-Consul-Token` or `Authorization: Bearer`,
//! in that order, as Consul reads it.
//!
//! Without a token a request acts as the anonymous token and is refused with
//! 403 `Permission denied: …`; an unknown token gets 403 `ACL not found`.
//! Real Consul *filters* catalog and health reads for the anonymous token
//! instead of refusing them (200 with empty results and
//! `X-Consul-Results-Filtered-By-ACLs: true`); [`Acl::set_filter_reads`]
//! switches the double to that behaviour.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::http::{ApiError, Req};

/// The anonymous token's accessor ID in every Consul cluster.
const ANONYMOUS: &str = "00000000-0000-0000-0000-000000000002";

#[derive(Default)]
pub struct Acl {
    token: Mutex<Option<String>>,
    filter_reads: AtomicBool,
}

/// The outcome of a read's ACL check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadAccess {
    Full,
    /// Anonymous under read filtering: the read succeeds with nothing in it.
    Filtered,
}

/// Who a request acts as.
enum Caller {
    /// ACLs are off, or the request carries the management token.
    Allowed,
    Anonymous,
    /// A token the cluster does not know.
    Unknown,
}

impl Acl {
    pub fn set_token(&self, token: Option<&str>) {
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = token.map(str::to_string);
    }

    pub fn set_filter_reads(&self, on: bool) {
        self.filter_reads.store(on, Ordering::SeqCst);
    }

    fn caller(&self, req: &Req) -> Caller {
        let expected = self.token.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match (expected, presented(req)) {
            (None, _) => Caller::Allowed,
            (Some(expected), Some(t)) if t == expected => Caller::Allowed,
            (Some(_), Some(_)) => Caller::Unknown,
            (Some(_), None) => Caller::Anonymous,
        }
    }

    /// Checks a write (or a read Consul refuses rather than filters, such as
    /// a single KV key) needing `permission` (e.g. `service:write`) on
    /// `resource`.
    pub fn require(&self, req: &Req, permission: &str, resource: &str) -> Result<(), ApiError> {
        match self.caller(req) {
            Caller::Allowed => Ok(()),
            Caller::Unknown => Err(ApiError::new(403, "ACL not found")),
            Caller::Anonymous => Err(denied(permission, resource)),
        }
    }

    /// Checks a read Consul filters (catalog, health, KV lists).
    pub fn read(
        &self,
        req: &Req,
        permission: &str,
        resource: &str,
    ) -> Result<ReadAccess, ApiError> {
        match self.caller(req) {
            Caller::Anonymous if self.filter_reads.load(Ordering::SeqCst) => {
                Ok(ReadAccess::Filtered)
            }
            _ => self
                .require(req, permission, resource)
                .map(|()| ReadAccess::Full),
        }
    }
}

fn presented(req: &Req) -> Option<String> {
    if let Some(t) = req.query.get("token").filter(|t| !t.is_empty()) {
        return Some(t.to_string());
    }
    let header = |name: &str| {
        req.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .filter(|v| !v.is_empty())
    };
    if let Some(t) = header("x-consul-token") {
        return Some(t);
    }
    let auth = header("authorization")?;
    let mut parts = auth.split(' ');
    let scheme = parts.next()?;
    let value = parts.collect::<Vec<_>>().join(" ");
    let token = value.split_whitespace().next()?;
    (scheme == "Bearer").then(|| token.to_string())
}

fn denied(permission: &str, resource: &str) -> ApiError {
    let mut msg = format!(
        "Permission denied: token with AccessorID '{ANONYMOUS}' lacks permission '{permission}'"
    );
    if !resource.is_empty() {
        msg.push_str(&format!(" on {resource:?}"));
    }
    ApiError::new(403, msg)
}
