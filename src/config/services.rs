//! Per-service upstream settings in `laneway.toml`: active health checks and
//! passive ejection, with `[health_checks]` holding the defaults. Control
//! plane only.
//!
//! ```toml
//! [health_checks]             # defaults for every service
//! interval = "5s"
//! timeout = "1s"
//! rise = 2
//! fall = 3
//! # http = "/health"          # check every service (else only those with a check table)
//!
//! [health_checks.passive]
//! consecutive_failures = 5
//! on_5xx = false
//! base_ejection = "10s"
//! max_ejection = "5m"
//!
//! [services.user-api.check]
//! http = "/health"            # or tcp = true
//! interval = "2s"
//!
//! [services.user-api.passive]
//! on_5xx = true
//! ```
//!
//! Each service's keys live in its `check` and `passive` sub-tables, so that
//! other per-service keys can sit next to them.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::Validator;

/// How an instance is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// `GET <path>`: 2xx and 3xx pass.
    Http { path: String },
    /// A TCP connect passes.
    Tcp,
}

/// An active check of every instance of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveCheck {
    pub kind: CheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive passes that bring a down instance back.
    pub rise: u32,
    /// Consecutive failures that take an instance out.
    pub fall: u32,
}

/// Passive ejection: an instance that fails `consecutive_failures` requests
/// in a row is taken out for a backoff (`base_ejection`, doubled at each
/// ejection in a row, at most `max_ejection`), then tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassivePolicy {
    pub enabled: bool,
    pub consecutive_failures: u32,
    /// Count 5xx responses as failures (connect and read failures always count).
    pub on_5xx: bool,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
}

impl Default for PassivePolicy {
    fn default() -> Self {
        PassivePolicy {
            enabled: true,
            consecutive_failures: 5,
            on_5xx: false,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
        }
    }
}

/// The health settings of one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceHealth {
    pub check: Option<ActiveCheck>,
    pub passive: PassivePolicy,
}

/// `[health_checks]` and every `[services.<name>]`'s `check`/`passive`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthChecksConfig {
    /// The check of services without their own table (`[health_checks]`
    /// with `http` or `tcp`); `None`: such services are not checked.
    pub default_check: Option<ActiveCheck>,
    pub default_passive: PassivePolicy,
    /// Services with a `check` or `passive` table.
    pub services: BTreeMap<String, ServiceHealth>,
}

impl HealthChecksConfig {
    /// The active check of `service`, if it is checked.
    pub fn check_for(&self, service: &str) -> Option<&ActiveCheck> {
        match self.services.get(service) {
            Some(s) => s.check.as_ref(),
            None => self.default_check.as_ref(),
        }
    }

    /// The passive policy of `service`.
    pub fn passive_for(&self, service: &str) -> PassivePolicy {
        self.services
            .get(service)
            .map_or(self.default_passive, |s| s.passive)
    }
}

// ---- raw schema ----

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealthChecks {
    http: Option<Spanned<String>>,
    tcp: Option<Spanned<bool>>,
    enabled: Option<bool>,
    interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    rise: Option<Spanned<i64>>,
    fall: Option<Spanned<i64>>,
    passive: Option<RawPassive>,
}

impl RawHealthChecks {
    /// The check keys, as a service's check table has them.
    fn split(self) -> (RawCheck, Option<RawPassive>) {
        let check = RawCheck {
            http: self.http,
            tcp: self.tcp,
            enabled: self.enabled,
            interval: self.interval,
            timeout: self.timeout,
            rise: self.rise,
            fall: self.fall,
        };
        (check, self.passive)
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub(super) check: Option<Spanned<RawCheck>>,
    pub(super) passive: Option<RawPassive>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCheck {
    http: Option<Spanned<String>>,
    tcp: Option<Spanned<bool>>,
    /// `false` turns a default check off for one service.
    enabled: Option<bool>,
    interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    rise: Option<Spanned<i64>>,
    fall: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPassive {
    enabled: Option<bool>,
    consecutive_failures: Option<Spanned<i64>>,
    on_5xx: Option<bool>,
    base_ejection: Option<Spanned<String>>,
    max_ejection: Option<Spanned<String>>,
}

/// Defaults of the timing keys when `[health_checks]` leaves them out.
struct Timing {
    interval: Duration,
    timeout: Duration,
    rise: u32,
    fall: u32,
}

impl Validator<'_> {
    /// Resolves `[health_checks]` and `[services.*]`; every bad value is an
    /// error with its line.
    pub(super) fn health_checks(
        &mut self,
        defaults: Option<RawHealthChecks>,
        services: BTreeMap<String, RawService>,
    ) -> HealthChecksConfig {
        let (check, passive) = defaults.unwrap_or_default().split();
        let base = Timing {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
        };
        let timing = Timing {
            interval: self
                .check_duration(&check.interval, "[health_checks] interval")
                .unwrap_or(base.interval),
            timeout: self
                .check_duration(&check.timeout, "[health_checks] timeout")
                .unwrap_or(base.timeout),
            rise: self
                .count(&check.rise, "[health_checks] rise")
                .unwrap_or(base.rise),
            fall: self
                .count(&check.fall, "[health_checks] fall")
                .unwrap_or(base.fall),
        };
        let default_check = self
            .check_kind(&check, "[health_checks]", None)
            .filter(|_| check.enabled != Some(false))
            .map(|kind| ActiveCheck {
                kind,
                interval: timing.interval,
                timeout: timing.timeout,
                rise: timing.rise,
                fall: timing.fall,
            });
        let default_passive = self.passive(
            passive.as_ref(),
            &PassivePolicy::default(),
            "[health_checks.passive]",
        );
        let mut out = BTreeMap::new();
        for (name, raw) in services {
            let check = match &raw.check {
                None => default_check.clone(),
                Some(c) => {
                    let at = format!("[services.{name}.check]");
                    let c_span = c.span().start;
                    let c = c.get_ref();
                    let kind = self.check_kind(c, &at, default_check.as_ref().map(|d| &d.kind));
                    let interval = self.check_duration(&c.interval, &format!("{at} interval"));
                    let timeout = self.check_duration(&c.timeout, &format!("{at} timeout"));
                    let rise = self.count(&c.rise, &format!("{at} rise"));
                    let fall = self.count(&c.fall, &format!("{at} fall"));
                    if c.enabled == Some(false) {
                        None
                    } else if let Some(kind) = kind {
                        Some(ActiveCheck {
                            kind,
                            interval: interval.unwrap_or(timing.interval),
                            timeout: timeout.unwrap_or(timing.timeout),
                            rise: rise.unwrap_or(timing.rise),
                            fall: fall.unwrap_or(timing.fall),
                        })
                    } else if c.http.is_none() {
                        self.err(
                            c_span,
                            format!("{at} names no check: set http = \"/path\" or tcp = true (or enabled = false)"),
                        );
                        None
                    } else {
                        None // the bad http value is reported already
                    }
                }
            };
            let passive = self.passive(
                raw.passive.as_ref(),
                &default_passive,
                &format!("[services.{name}.passive]"),
            );
            out.insert(name, ServiceHealth { check, passive });
        }
        HealthChecksConfig {
            default_check,
            default_passive,
            services: out,
        }
    }

    /// `http` or `tcp` of a check table, else `inherit`.
    fn check_kind(
        &mut self,
        c: &RawCheck,
        at: &str,
        inherit: Option<&CheckKind>,
    ) -> Option<CheckKind> {
        match (&c.http, &c.tcp) {
            (Some(h), Some(t)) if *t.get_ref() => {
                self.err(
                    t.span().start,
                    format!("{at} has both http and tcp; keep one"),
                );
                None
            }
            (Some(h), _) => {
                let path = h.get_ref();
                if path.starts_with('/') && !path.bytes().any(|b| b <= b' ' || b == 0x7f) {
                    Some(CheckKind::Http { path: path.clone() })
                } else {
                    self.err(
                        h.span().start,
                        format!("{at} http {path:?} must be a path starting with '/' (e.g. \"/health\")"),
                    );
                    None
                }
            }
            (None, Some(t)) if *t.get_ref() => Some(CheckKind::Tcp),
            _ => inherit.cloned(),
        }
    }

    fn check_duration(&mut self, d: &Option<Spanned<String>>, what: &str) -> Option<Duration> {
        let d = d.as_ref()?;
        match humantime::parse_duration(d.get_ref().trim()) {
            Ok(v) if v >= Duration::from_millis(1) => Some(v),
            _ => {
                self.err(
                    d.span().start,
                    format!(
                        "{what} {:?} is not a positive duration (e.g. \"5s\", \"500ms\")",
                        d.get_ref()
                    ),
                );
                None
            }
        }
    }

    fn count(&mut self, n: &Option<Spanned<i64>>, what: &str) -> Option<u32> {
        let n = n.as_ref()?;
        match u32::try_from(*n.get_ref()) {
            Ok(v) if (1..=1000).contains(&v) => Some(v),
            _ => {
                self.err(
                    n.span().start,
                    format!("{what} {} must be between 1 and 1000", n.get_ref()),
                );
                None
            }
        }
    }

    fn passive(
        &mut self,
        raw: Option<&RawPassive>,
        inherit: &PassivePolicy,
        at: &str,
    ) -> PassivePolicy {
        let Some(raw) = raw else {
            return *inherit;
        };
        let base = self
            .check_duration(&raw.base_ejection, &format!("{at} base_ejection"))
            .unwrap_or(inherit.base_ejection);
        let max = self
            .check_duration(&raw.max_ejection, &format!("{at} max_ejection"))
            .unwrap_or(inherit.max_ejection);
        if max < base {
            let at_offset = raw
                .max_ejection
                .as_ref()
                .or(raw.base_ejection.as_ref())
                .map_or(0, |s| s.span().start);
            self.err(
                at_offset,
                format!(
                    "{at} max_ejection ({}) is shorter than base_ejection ({})",
                    humantime::format_duration(max),
                    humantime::format_duration(base)
                ),
            );
        }
        PassivePolicy {
            enabled: raw.enabled.unwrap_or(inherit.enabled),
            consecutive_failures: self
                .count(
                    &raw.consecutive_failures,
                    &format!("{at} consecutive_failures"),
                )
                .unwrap_or(inherit.consecutive_failures),
            on_5xx: raw.on_5xx.unwrap_or(inherit.on_5xx),
            base_ejection: base,
            max_ejection: max,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigErrors};
    use std::path::Path;
    use std::time::Duration;

    use super::*;

    fn parse(src: &str) -> Result<Config, ConfigErrors> {
        Config::parse(src, Path::new("/etc/laneway/laneway.toml"))
    }

    #[test]
    fn defaults_and_service_overrides() {
        let c = parse(
            r#"
[health_checks]
interval = "2s"
fall = 2

[health_checks.passive]
consecutive_failures = 3

[services.user-api.check]
http = "/health"
rise = 1

[services.order-api.check]
tcp = true
timeout = "300ms"

[services.web.passive]
on_5xx = true
base_ejection = "1s"
"#,
        )
        .expect("valid");
        let h = &c.health_checks;
        assert!(h.default_check.is_none());
        let u = h.check_for("user-api").expect("checked");
        assert_eq!(
            u.kind,
            CheckKind::Http {
                path: "/health".into()
            }
        );
        assert_eq!(
            (u.interval, u.timeout, u.rise, u.fall),
            (Duration::from_secs(2), Duration::from_secs(1), 1, 2)
        );
        let o = h.check_for("order-api").expect("checked");
        assert_eq!(
            (o.kind.clone(), o.timeout),
            (CheckKind::Tcp, Duration::from_millis(300))
        );
        assert!(h.check_for("web").is_none());
        assert!(h.check_for("other").is_none());
        let w = h.passive_for("web");
        assert!(w.on_5xx && w.enabled);
        assert_eq!(
            (w.consecutive_failures, w.base_ejection),
            (3, Duration::from_secs(1))
        );
        assert_eq!(h.passive_for("other").consecutive_failures, 3);
    }

    #[test]
    fn a_default_check_applies_unless_turned_off() {
        let c = parse(
            "[health_checks]\ntcp = true\n[services.a.check]\nenabled = false\n[services.b.passive]\nenabled = false\n",
        )
        .expect("valid");
        let h = &c.health_checks;
        assert!(h.check_for("a").is_none());
        assert_eq!(
            h.check_for("b").map(|c| c.kind.clone()),
            Some(CheckKind::Tcp)
        );
        assert_eq!(
            h.check_for("c").map(|c| c.kind.clone()),
            Some(CheckKind::Tcp)
        );
        assert!(!h.passive_for("b").enabled);
    }

    #[test]
    fn bad_values_name_key_and_line() {
        let err = parse(
            "[health_checks]\ninterval = \"soon\"\n[services.a.check]\nhttp = \"health\"\n[services.b.check]\ninterval = \"1s\"\n[services.c.check]\ntcp = true\nrise = 0\n[services.d.passive]\nbase_ejection = \"1m\"\nmax_ejection = \"10s\"\n",
        )
        .unwrap_err();
        let lines: Vec<usize> = err.0.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 4, 5, 9, 12], "{err}");
        let msg = err.to_string();
        for part in [
            "[health_checks] interval \"soon\"",
            "[services.a.check] http \"health\" must be a path",
            "[services.b.check] names no check",
            "[services.c.check] rise 0 must be between 1 and 1000",
            "max_ejection (10s) is shorter than base_ejection (1m)",
        ] {
            assert!(msg.contains(part), "{part}: {msg}");
        }
        let msg = parse("[services.a.check]\nhttp = \"/h\"\npath = \"/x\"\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains(":3:") && msg.contains("path"), "{msg}");
    }
}
