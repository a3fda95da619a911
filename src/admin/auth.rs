//! Who may do what on the admin listener: the tokens of `[admin]
//! tokens_file`, their scopes, and how a request presents one. Control
//! plane only.
//!
//! The tokens file is TOML:
//!
//! ```toml
//! [[token]]
//! name = "deploy"                  # recorded in the audit log
//! secret_sha256 = "9f86d0…"        # or secret = "…" (plain)
//! scopes = ["register", "lanes"]
//! ```
//!
//! Scopes: `read` (GET anything), `register` (the Consul agent endpoints),
//! `lanes` (create, patch, extend, delete lanes other than the baseline),
//! `admin` (the baseline, maintenance, rules; it grants every other scope
//! too). Any scope grants `read`: a token that may change something may look
//! at it.
//!
//! Secrets are kept only as SHA-256 digests and compared in constant time
//! (`subtle`), so a `secret_sha256` file never holds a usable secret and a
//! comparison's time does not tell how much of a guess was right.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use http::HeaderMap;
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tracing::{error, info};

/// One permission of the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Read,
    Register,
    Lanes,
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Read, Scope::Register, Scope::Lanes, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Register => "register",
            Scope::Lanes => "lanes",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|x| x.as_str() == s)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The scopes a token holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scopes(u8);

impl Scopes {
    pub fn of(list: &[Scope]) -> Scopes {
        Scopes(list.iter().fold(0, |acc, s| acc | s.bit()))
    }

    /// Holds `scope`: directly, through `admin`, or (for `read`) through any
    /// scope at all.
    pub fn grants(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
            || self.0 & Scope::Admin.bit() != 0
            || (scope == Scope::Read && self.0 != 0)
    }

    pub fn names(self) -> Vec<&'static str> {
        Scope::ALL
            .into_iter()
            .filter(|s| self.0 & s.bit() != 0)
            .map(Scope::as_str)
            .collect()
    }
}

struct Token {
    name: String,
    digest: [u8; 32],
    scopes: Scopes,
}

/// The parsed tokens file.
#[derive(Default)]
pub struct Tokens {
    tokens: Vec<Token>,
}

impl fmt::Debug for Tokens {
    /// Names and scopes only: digests never reach a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.tokens.iter().map(|t| (&t.name, t.scopes.names())))
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    token: Vec<toml::Spanned<RawToken>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: String,
    secret: Option<String>,
    secret_sha256: Option<String>,
    scopes: Vec<String>,
}

/// SHA-256 of a presented secret.
pub fn digest(secret: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Tokens {
    /// Parses a tokens file; every problem is reported, each with its line.
    pub fn parse(text: &str, path: &Path) -> Result<Tokens, String> {
        let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(1, |s| line_of(s.start));
            format!("{}:{line}: {}", path.display(), e.message())
        })?;
        let mut errors = Vec::new();
        let mut tokens: Vec<Token> = Vec::new();
        for spanned in raw.token {
            let line = line_of(spanned.span().start);
            let t = spanned.into_inner();
            let mut fail = |why: String| errors.push(format!("{}:{line}: {why}", path.display()));
            if t.name.trim().is_empty() {
                fail("a token needs a non-empty name (the audit log records it)".into());
                continue;
            }
            if tokens.iter().any(|x| x.name == t.name) {
                fail(format!("token name {:?} is used twice", t.name));
                continue;
            }
            let digest = match (&t.secret, &t.secret_sha256) {
                (Some(s), None) if s.len() >= 16 => digest(s),
                (Some(_), None) => {
                    fail(format!(
                        "token {:?}: secret is shorter than 16 characters; use a random secret \
                         (e.g. `openssl rand -hex 32`)",
                        t.name
                    ));
                    continue;
                }
                (None, Some(h)) => match parse_hex32(h) {
                    Some(d) => d,
                    None => {
                        fail(format!(
                            "token {:?}: secret_sha256 is not 64 hex digits \
                             (`printf %s SECRET | sha256sum`)",
                            t.name
                        ));
                        continue;
                    }
                },
                _ => {
                    fail(format!(
                        "token {:?}: give exactly one of secret and secret_sha256",
                        t.name
                    ));
                    continue;
                }
            };
            let mut scopes = Vec::new();
            for s in &t.scopes {
                match Scope::parse(s) {
                    Some(x) => scopes.push(x),
                    None => fail(format!(
                        "token {:?}: unknown scope {s:?} (scopes: read, register, lanes, admin)",
                        t.name
                    )),
                }
            }
            if t.scopes.is_empty() {
                fail(format!("token {:?}: scopes is empty", t.name));
            }
            if tokens.iter().any(|x| bool::from(x.digest.ct_eq(&digest))) {
                fail(format!(
                    "token {:?}: the same secret as another token",
                    t.name
                ));
            }
            tokens.push(Token {
                name: t.name,
                digest,
                scopes: Scopes::of(&scopes),
            });
        }
        if errors.is_empty() {
            Ok(Tokens { tokens })
        } else {
            Err(errors.join("\n"))
        }
    }

    /// The token whose secret is `presented`: its name and scopes.
    pub fn find(&self, presented: &str) -> Option<(&str, Scopes)> {
        // every token is compared, so the time does not tell which matched
        self.find_digest(&digest(presented))
    }

    /// The token whose secret digests to `d` (a session's token, looked up
    /// again on every request so that removing a token ends its sessions).
    pub fn find_digest(&self, d: &[u8; 32]) -> Option<(&str, Scopes)> {
        let mut found = None;
        for t in &self.tokens {
            if bool::from(t.digest.ct_eq(d)) {
                found = Some((t.name.as_str(), t.scopes));
            }
        }
        found
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }
}

/// The token a request presents: `Authorization: Bearer`, `X-Laneway-Token`,
/// Consul's `X-Consul-Token` or `Authorization: Bearer`, or `?token=` (as
/// Consul clients send it), in that order.
pub fn presented<'a>(
    headers: &'a HeaderMap,
    query: Option<&'a str>,
) -> Option<std::borrow::Cow<'a, str>> {
    use std::borrow::Cow;
    if let Some(v) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let mut parts = v.trim().splitn(2, ' ');
        if parts
            .next()
            .is_some_and(|s| s.eq_ignore_ascii_case("bearer"))
        {
            if let Some(t) = parts.next().map(str::trim).filter(|t| !t.is_empty()) {
                return Some(Cow::Borrowed(t));
            }
        }
    }
    for name in ["x-laneway-token", "x-consul-token"] {
        if let Some(t) = headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            return Some(Cow::Borrowed(t));
        }
    }
    let query = query?;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == "token" && !v.is_empty())
            .then(|| percent_encoding::percent_decode_str(v).decode_utf8_lossy())
    })
}

/// The tokens file, reloaded when it changes: a file that no longer parses
/// is reported and the tokens already loaded stay in force.
pub struct TokenStore {
    path: PathBuf,
    current: ArcSwap<Tokens>,
    loaded_mtime: std::sync::Mutex<Option<SystemTime>>,
}

impl TokenStore {
    /// Loads `path`; an error names the file and every problem in it.
    pub fn open(path: &Path) -> Result<TokenStore, String> {
        let (tokens, mtime) = load(path)?;
        info!(file = %path.display(), tokens = tokens.len(), "admin tokens loaded");
        Ok(TokenStore {
            path: path.to_path_buf(),
            current: ArcSwap::from_pointee(tokens),
            loaded_mtime: std::sync::Mutex::new(mtime),
        })
    }

    /// The tokens in force, after reloading the file if it changed.
    pub fn tokens(&self) -> Arc<Tokens> {
        let now = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        let mut seen = self.loaded_mtime.lock().unwrap_or_else(|p| p.into_inner());
        if now != *seen {
            *seen = now;
            match load(&self.path) {
                Ok((tokens, _)) => {
                    info!(file = %self.path.display(), tokens = tokens.len(), "admin tokens reloaded");
                    self.current.store(Arc::new(tokens));
                }
                Err(e) => error!("admin tokens not reloaded, the previous ones stay in force: {e}"),
            }
        }
        self.current.load_full()
    }
}

fn load(path: &Path) -> Result<(Tokens, Option<SystemTime>), String> {
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("[admin] tokens_file {}: {e}", path.display()))?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("[admin] tokens_file {}: {e}", path.display()))?;
    let tokens = Tokens::parse(&text, path)?;
    Ok((tokens, meta.modified().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[[token]]
name = "deploy"
secret = "deploy-secret-0123456789"
scopes = ["register", "lanes"]

[[token]]
name = "ops"
secret_sha256 = "SHA"
scopes = ["admin"]

[[token]]
name = "viewer"
secret = "viewer-secret-0123456789"
scopes = ["read"]
"#;

    fn hex(d: [u8; 32]) -> String {
        d.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn tokens() -> Tokens {
        let text = FILE.replace("SHA", &hex(digest("ops-secret-0123456789")));
        Tokens::parse(&text, Path::new("tokens.toml")).unwrap()
    }

    #[test]
    fn secrets_find_their_token_and_scopes() {
        let t = tokens();
        let (name, scopes) = t.find("deploy-secret-0123456789").unwrap();
        assert_eq!(name, "deploy");
        assert!(scopes.grants(Scope::Register) && scopes.grants(Scope::Lanes));
        assert!(scopes.grants(Scope::Read), "any scope grants read");
        assert!(!scopes.grants(Scope::Admin));
        let (name, scopes) = t.find("ops-secret-0123456789").unwrap();
        assert_eq!(name, "ops");
        assert!(
            Scope::ALL.into_iter().all(|s| scopes.grants(s)),
            "admin grants all"
        );
        let (_, scopes) = t.find("viewer-secret-0123456789").unwrap();
        assert!(scopes.grants(Scope::Read) && !scopes.grants(Scope::Lanes));
        assert!(t.find("deploy-secret-012345678").is_none());
        assert!(t.find("").is_none());
        assert!(!Scopes::default().grants(Scope::Read));
    }

    #[test]
    fn every_problem_is_reported_with_its_line() {
        let text = r#"[[token]]
name = "a"
secret = "short"
scopes = ["read"]

[[token]]
name = "b"
secret_sha256 = "xyz"
scopes = ["read", "root"]

[[token]]
name = "c"
scopes = []
"#;
        let err = Tokens::parse(text, Path::new("/etc/laneway/tokens.toml")).unwrap_err();
        assert!(
            err.contains("tokens.toml:1: token \"a\": secret is shorter"),
            "{err}"
        );
        assert!(
            err.contains("tokens.toml:6: token \"b\": secret_sha256 is not 64 hex"),
            "{err}"
        );
        assert!(
            err.contains("tokens.toml:11: token \"c\": give exactly one"),
            "{err}"
        );
        let err = Tokens::parse(
            "[[token]]\nname = \"a\"\nsecret = \"0123456789abcdef\"\nscopes = [\"root\"]\n",
            Path::new("t.toml"),
        )
        .unwrap_err();
        assert!(
            err.contains("t.toml:1: token \"a\": unknown scope \"root\""),
            "{err}"
        );
        let err = Tokens::parse("[[token]]\nnme = 1\n", Path::new("t.toml")).unwrap_err();
        assert!(err.contains("t.toml:") && err.contains("nme"), "{err}");
    }

    #[test]
    fn tokens_are_taken_from_bearer_laneway_consul_headers_and_the_query() {
        let mut h = HeaderMap::new();
        assert_eq!(
            presented(&h, Some("a=1&token=q%2Bv")).as_deref(),
            Some("q+v")
        );
        h.insert("x-consul-token", "consul".parse().unwrap());
        assert_eq!(presented(&h, Some("token=q")).as_deref(), Some("consul"));
        h.insert("x-laneway-token", "lw".parse().unwrap());
        assert_eq!(presented(&h, None).as_deref(), Some("lw"));
        h.insert("authorization", "Bearer  bearer-t ".parse().unwrap());
        assert_eq!(presented(&h, None).as_deref(), Some("bearer-t"));
        let mut basic = HeaderMap::new();
        basic.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(presented(&basic, None), None);
    }

    #[test]
    fn a_changed_file_is_reloaded_and_a_broken_one_keeps_the_old_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        let one = "[[token]]\nname = \"a\"\nsecret = \"aaaaaaaaaaaaaaaa\"\nscopes = [\"read\"]\n";
        std::fs::write(&path, one).unwrap();
        let store = TokenStore::open(&path).unwrap();
        assert!(store.tokens().find("aaaaaaaaaaaaaaaa").is_some());
        let two = "[[token]]\nname = \"b\"\nsecret = \"bbbbbbbbbbbbbbbb\"\nscopes = [\"read\"]\n";
        std::fs::write(&path, two).unwrap();
        // a different mtime makes the change visible whatever the clock's resolution
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(SystemTime::now() + std::time::Duration::from_secs(5))
            .unwrap();
        assert!(store.tokens().find("bbbbbbbbbbbbbbbb").is_some());
        assert!(store.tokens().find("aaaaaaaaaaaaaaaa").is_none());
        std::fs::write(&path, "[[token]]\nname = 3\n").unwrap();
        f.set_modified(SystemTime::now() + std::time::Duration::from_secs(10))
            .unwrap();
        assert!(
            store.tokens().find("bbbbbbbbbbbbbbbb").is_some(),
            "broken file keeps the old tokens"
        );
    }
}
