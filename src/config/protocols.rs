//! The `laneway.toml` keys of the protocol layer: `[tls]` (HTTPS listeners
//! and the certificate directory), `[services.<name>]` (how laneway talks to
//! a service's instances: TLS, SNI, CA, verification, HTTP/2), and the
//! `[proxy] h2c_listen`, `[proxy] max_body_size` and `[lanes] baggage_key`
//! keys. Control plane only; nothing here runs on the request path.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::Validator;

/// `[tls]`: HTTPS data-plane listeners, and the certificates laneway
/// terminates CONNECT tunnels on lane entries with.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// Empty (`listen = []`): no HTTPS listener, certificates for CONNECT only.
    pub listen: Vec<SocketAddr>,
    /// Directory of PEM pairs `<name>.crt` + `<name>.key`.
    pub certs: PathBuf,
    /// The pair (by file stem) served when SNI matches no certificate.
    pub default_cert: String,
}

/// `[services.<name>]`: how to reach the instances of one service. A
/// service without a table is plain HTTP/1.1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    /// Connect to instances with TLS.
    pub tls: bool,
    /// The server name sent in SNI and verified in the certificate
    /// (default: the request's production host).
    pub sni: Option<String>,
    /// PEM file of CA certificates that verify the instances (default: the
    /// system roots).
    pub ca_file: Option<PathBuf>,
    /// Verify the instances' certificates (on by default).
    pub verify: bool,
    /// Speak HTTP/2 to the instances: ALPN `h2` with TLS, prior knowledge
    /// (h2c) without.
    pub h2: bool,
}

impl ServiceConfig {
    /// Whether the service needs more than plain HTTP/1.1 upstream.
    pub fn is_special(&self) -> bool {
        self.tls || self.h2
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    listen: Option<Vec<Spanned<String>>>,
    certs: Option<Spanned<String>>,
    default_cert: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub(super) tls: Option<bool>,
    pub(super) sni: Option<Spanned<String>>,
    pub(super) ca_file: Option<Spanned<String>>,
    pub(super) verify: Option<bool>,
    pub(super) h2: Option<bool>,
}

/// A size in bytes: an integer, or a string with an optional `k`/`m`/`g`
/// suffix (nginx's units, powers of 1024; `KiB`/`MiB`/`GiB` also accepted).
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawSize {
    Bytes(u64),
    Text(String),
}

/// Parses `"10m"`, `"512k"`, `"1GiB"`, `"1024"`.
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

impl Validator<'_> {
    /// `[proxy] max_body_size`: `None` is no limit (`0`).
    pub(super) fn max_body_size(&mut self, raw: Option<Spanned<RawSize>>) -> Option<u64> {
        const DEFAULT: u64 = 100 << 20;
        let Some(raw) = raw else {
            return Some(DEFAULT);
        };
        let start = raw.span().start;
        let size = match raw.into_inner() {
            RawSize::Bytes(n) => Some(n),
            RawSize::Text(t) => parse_size(&t).or_else(|| {
                self.err(
                    start,
                    format!("[proxy] max_body_size {t:?} is not a size (e.g. \"10m\", \"512k\", 1048576; 0 for no limit)"),
                );
                Some(DEFAULT)
            }),
        };
        size.filter(|&n| n > 0)
    }

    pub(super) fn h2c_listen(&mut self, raw: Option<Vec<Spanned<String>>>) -> Vec<SocketAddr> {
        raw.unwrap_or_default()
            .iter()
            .filter_map(|a| self.socket_addr(a, "[proxy] h2c_listen"))
            .collect()
    }

    /// `[lanes] baggage_key`: a W3C baggage member key (token characters).
    pub(super) fn baggage_key(&mut self, raw: Option<Spanned<String>>) -> String {
        match raw {
            None => "laneway-lane".to_string(),
            Some(k) => {
                let key = k.get_ref().trim();
                let token = |b: u8| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b);
                if key.is_empty() || !key.bytes().all(token) {
                    self.err(
                        k.span().start,
                        format!(
                            "[lanes] baggage_key {:?} is not a baggage key (letters, digits and -_.*!#$%&'+^`|~)",
                            k.get_ref()
                        ),
                    );
                    return "laneway-lane".to_string();
                }
                key.to_string()
            }
        }
    }

    /// `[tls]`, when present. `taken` are the other listen addresses.
    pub(super) fn tls(
        &mut self,
        raw: Option<Spanned<RawTls>>,
        base: &Path,
        taken: &[(SocketAddr, &str)],
    ) -> Option<TlsConfig> {
        let raw = raw?.into_inner();
        let listen: Vec<SocketAddr> = match raw.listen {
            None => vec![SocketAddr::from(([127, 0, 0, 1], 8443))],
            // No HTTPS listener: the certificates serve CONNECT tunnels on
            // lane entries only (proxy::connect).
            Some(list) if list.is_empty() => Vec::new(),
            Some(list) => list
                .iter()
                .filter_map(|a| {
                    let addr = self.socket_addr(a, "[tls] listen")?;
                    if let Some((_, what)) = taken.iter().find(|(t, _)| *t == addr) {
                        self.err(
                            a.span().start,
                            format!(
                                "[tls] listen {addr} is already {what}; give HTTPS its own address"
                            ),
                        );
                    }
                    Some(addr)
                })
                .collect(),
        };
        let certs = base.join(raw.certs.as_ref().map_or("certs", |c| c.get_ref().as_str()));
        let default_cert = match raw.default_cert {
            None => "default".to_string(),
            Some(d) if d.get_ref().is_empty() || d.get_ref().contains('/') => {
                self.err(
                    d.span().start,
                    format!(
                        "[tls] default_cert {:?} must be the name of a pair in the certs directory (\"default\" for default.crt + default.key)",
                        d.get_ref()
                    ),
                );
                "default".to_string()
            }
            Some(d) => d.into_inner(),
        };
        Some(TlsConfig {
            listen,
            certs,
            default_cert,
        })
    }

    /// `[services.<name>]` tables.
    pub(super) fn services(
        &mut self,
        raw: BTreeMap<String, Spanned<RawService>>,
        base: &Path,
    ) -> BTreeMap<String, ServiceConfig> {
        let mut out = BTreeMap::new();
        for (name, raw) in raw {
            let at = raw.span().start;
            let raw = raw.into_inner();
            let tls = raw.tls.unwrap_or(false);
            if !tls {
                let tls_only = [
                    ("sni", raw.sni.is_some()),
                    ("ca_file", raw.ca_file.is_some()),
                    ("verify", raw.verify.is_some()),
                ];
                for (key, set) in tls_only {
                    if set {
                        self.err(at, format!("[services.{name}] {key} needs tls = true"));
                    }
                }
            }
            let sni = raw.sni.and_then(|s| {
                let v = s
                    .get_ref()
                    .trim()
                    .trim_end_matches('.')
                    .to_ascii_lowercase();
                if super::is_hostname(&v) {
                    Some(v)
                } else {
                    self.err(
                        s.span().start,
                        format!("[services.{name}] sni {:?} is not a DNS name", s.get_ref()),
                    );
                    None
                }
            });
            out.insert(
                name,
                ServiceConfig {
                    tls,
                    sni,
                    ca_file: raw.ca_file.map(|c| base.join(c.get_ref())),
                    verify: raw.verify.unwrap_or(true),
                    h2: raw.h2.unwrap_or(false),
                },
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn parse(src: &str) -> Result<Config, crate::config::ConfigErrors> {
        Config::parse(src, Path::new("/etc/laneway/laneway.toml"))
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10m"), Some(10 << 20));
        assert_eq!(parse_size("512K"), Some(512 << 10));
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("77"), Some(77));
        assert_eq!(parse_size("ten"), None);
        assert_eq!(parse_size("1t"), None);
    }

    #[test]
    fn protocol_keys_parse() {
        let c = parse(
            r#"
[proxy]
listen = ["127.0.0.1:8080"]
h2c_listen = ["127.0.0.1:8081"]
max_body_size = "1m"
[lanes]
baggage_key = "lane"
[tls]
listen = ["127.0.0.1:8443"]
certs = "certs"
default_cert = "star"
[services.user-api]
tls = true
sni = "User.Internal"
ca_file = "ca.pem"
h2 = true
[services.grpc-echo]
h2 = true
"#,
        )
        .expect("valid");
        assert_eq!(c.proxy.h2c_listen, vec!["127.0.0.1:8081".parse().unwrap()]);
        assert_eq!(c.proxy.max_body_size, Some(1 << 20));
        assert_eq!(c.lanes.baggage_key, "lane");
        let tls = c.tls.expect("tls");
        assert_eq!(tls.certs, Path::new("/etc/laneway/certs"));
        assert_eq!(tls.default_cert, "star");
        let u = &c.services["user-api"];
        assert!(u.tls && u.h2 && u.verify);
        assert_eq!(u.sni.as_deref(), Some("user.internal"));
        assert_eq!(u.ca_file.as_deref(), Some(Path::new("/etc/laneway/ca.pem")));
        assert!(!c.services["grpc-echo"].tls);
        // certificates for CONNECT tunnels only, no HTTPS listener
        let only_certs = parse("[tls]\nlisten = []\ncerts = \"certs\"\n").expect("valid");
        assert!(only_certs.tls.expect("tls").listen.is_empty());
        let d = parse("").unwrap();
        assert!(d.tls.is_none() && d.services.is_empty() && d.proxy.h2c_listen.is_empty());
        assert_eq!(d.proxy.max_body_size, Some(100 << 20));
        assert_eq!(d.lanes.baggage_key, "laneway-lane");
        assert_eq!(
            parse("[proxy]\nmax_body_size = 0\n")
                .unwrap()
                .proxy
                .max_body_size,
            None
        );
    }

    #[test]
    fn bad_protocol_keys_are_errors_with_their_line() {
        let err = parse(
            "[proxy]\nlisten = [\"127.0.0.1:8080\"]\nmax_body_size = \"lots\"\n[lanes]\nbaggage_key = \"a b\"\n[tls]\nlisten = [\"127.0.0.1:8080\"]\n[services.web]\nsni = \"x\"\n",
        )
        .unwrap_err();
        let msg = err.to_string();
        for part in [
            "laneway.toml:3:",
            "max_body_size \"lots\"",
            "laneway.toml:5:",
            "baggage_key \"a b\"",
            "laneway.toml:7:",
            "[tls] listen 127.0.0.1:8080 is already [proxy] listen",
            "[services.web] sni needs tls = true",
        ] {
            assert!(msg.contains(part), "{part}: {msg}");
        }
    }
}
