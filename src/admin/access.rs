//! The admin listener's front door: a middleware that every admin request
//! passes. In order:
//! 1. the Host must name this listener ([`guard::host_allowed`]): no DNS
//!    rebinding;
//! 2. a state-changing request from a browser must come from the admin's
//!    own origin ([`guard::cross_site`]);
//! 3. the caller is identified: a token (header or `?token=`), else the
//!    dashboard session cookie, else anonymous;
//! 4. the scope the path needs ([`guard::required_scope`]) must be held:
//!    401 without credentials, 403 with credentials that lack it, each
//!    naming the scope;
//! 5. a state change made with a session cookie must carry the session's
//!    CSRF token (`X-CSRF-Token`, or the `csrf` field of a form).
//!
//! The caller is handed to the handlers as a [`Caller`] extension (the
//! audit log records its name). Without `[admin] tokens_file` every caller
//! is `anonymous` with every scope (the loopback demo), and the checks of
//! steps 1, 2 and 5 still apply. Control plane only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::auth::{self, Scope, Scopes, TokenStore};
use super::guard;
use crate::config::AdminConfig;

/// The dashboard's session cookie.
pub const SESSION_COOKIE: &str = "laneway_session";
/// How long a dashboard session lasts without use.
const SESSION_IDLE: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most; the least recently used go first.
const MAX_SESSIONS: usize = 10_000;
/// The largest form body read for its CSRF field.
const MAX_FORM: usize = 1 << 20;

/// Who is calling, for handlers and the audit log.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's name, or `anonymous`.
    pub name: String,
    pub scopes: Scopes,
    /// The CSRF token of the caller's dashboard session, for forms.
    pub csrf: Option<String>,
}

impl Caller {
    fn anonymous(scopes: Scopes) -> Caller {
        Caller {
            name: "anonymous".into(),
            scopes,
            csrf: None,
        }
    }
}

struct Session {
    /// The token's digest; `None`: an anonymous session (no tokens file).
    token: Option<[u8; 32]>,
    csrf: String,
    last_used: Instant,
}

/// Tokens, anonymous scopes, allowed host names and dashboard sessions.
pub struct Access {
    tokens: Option<TokenStore>,
    anonymous: Scopes,
    hostnames: Vec<String>,
    sessions: Mutex<HashMap<String, Session>>,
}

impl Access {
    /// From `[admin]`; an unreadable or invalid tokens file is an error
    /// naming the file and each problem.
    pub fn new(cfg: &AdminConfig) -> Result<Access, String> {
        let tokens = cfg
            .tokens_file
            .as_deref()
            .map(TokenStore::open)
            .transpose()?;
        let anonymous = if tokens.is_none() {
            Scopes::of(&Scope::ALL)
        } else {
            Scopes::of(
                &cfg.anonymous
                    .iter()
                    .filter_map(|s| Scope::parse(s))
                    .collect::<Vec<_>>(),
            )
        };
        Ok(Access {
            tokens,
            anonymous,
            hostnames: cfg.hostnames.clone(),
            sessions: Mutex::new(HashMap::new()),
        })
    }

    /// Tokens are required (a tokens file is configured).
    pub fn requires_tokens(&self) -> bool {
        self.tokens.is_some()
    }

    /// Signs in with a token's secret: a new session id, or `None` for a
    /// secret no token has.
    pub fn sign_in(&self, secret: &str) -> Option<(String, Caller)> {
        let (token, caller) = match &self.tokens {
            None => (None, Caller::anonymous(self.anonymous)),
            Some(store) => {
                let tokens = store.tokens();
                let (name, scopes) = tokens.find(secret)?;
                (
                    Some(auth::digest(secret)),
                    Caller {
                        name: name.to_string(),
                        scopes,
                        csrf: None,
                    },
                )
            }
        };
        let (id, csrf) = self.new_session(token);
        Some((
            id,
            Caller {
                csrf: Some(csrf),
                ..caller
            },
        ))
    }

    /// Ends a session.
    pub fn sign_out(&self, id: &str) {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    fn new_session(&self, token: Option<[u8; 32]>) -> (String, String) {
        let id = random_hex();
        let csrf = random_hex();
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.retain(|_, s| s.last_used.elapsed() < SESSION_IDLE);
        if sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| k.clone())
            {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(
            id.clone(),
            Session {
                token,
                csrf: csrf.clone(),
                last_used: Instant::now(),
            },
        );
        (id, csrf)
    }

    /// The caller of a session cookie, if the session (and its token) is
    /// still valid.
    fn session(&self, id: &str) -> Option<Caller> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let s = sessions.get_mut(id)?;
        if s.last_used.elapsed() >= SESSION_IDLE {
            sessions.remove(id);
            return None;
        }
        s.last_used = Instant::now();
        let csrf = Some(s.csrf.clone());
        match (&s.token, &self.tokens) {
            (None, None) => Some(Caller {
                csrf,
                ..Caller::anonymous(self.anonymous)
            }),
            (Some(d), Some(store)) => {
                let tokens = store.tokens();
                let (name, scopes) = tokens.find_digest(d)?;
                Some(Caller {
                    name: name.to_string(),
                    scopes,
                    csrf,
                })
            }
            _ => None,
        }
    }
}

fn random_hex() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 24];
    // the system's CSPRNG; it does not fail on Linux once booted
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        b = std::array::from_fn(|_| fastrand::u8(..));
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn cookie<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k.trim() == name).then(|| v.trim())
        })
}

fn refuse(status: StatusCode, message: String, scope: Option<Scope>) -> Response {
    let mut body = json!({ "error": message });
    if let Some(s) = scope {
        body["scope"] = json!(s.as_str());
    }
    let mut resp = (status, axum::Json(body)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"laneway\""),
        );
    }
    resp
}

fn wants_html(req: &Request) -> bool {
    req.headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"))
}

/// The middleware (see the module doc).
pub async fn check(State(access): State<Arc<Access>>, mut req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    // (health probes answer whatever Host they name: LVS and load
    // balancers probe by address, some without a Host at all)
    let probe = matches!(req.uri().path(), "/healthz" | "/lvs/health");
    if !probe && !guard::host_allowed(&host, &access.hostnames) {
        return refuse(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "Host {host:?} is not a name of this admin listener; add it to [admin] hostnames \
                 (names are checked so that a hostile DNS name cannot reach the admin API)"
            ),
            None,
        );
    }
    let method = req.method().clone();
    if let Some(why) = guard::cross_site(&method, req.headers(), &host) {
        return refuse(StatusCode::FORBIDDEN, why, None);
    }
    let path = req.uri().path().to_string();
    let presented = auth::presented(req.headers(), req.uri().query()).map(|t| t.into_owned());
    let (caller, by_session) = match (&access.tokens, presented) {
        (Some(store), Some(secret)) => match store.tokens().find(&secret) {
            Some((name, scopes)) => (
                Caller {
                    name: name.to_string(),
                    scopes,
                    csrf: None,
                },
                false,
            ),
            None => {
                return refuse(
                    StatusCode::UNAUTHORIZED,
                    "the token presented is not valid (unknown or revoked)".into(),
                    None,
                )
            }
        },
        _ => match cookie(&req, SESSION_COOKIE).and_then(|id| access.session(id)) {
            Some(c) => (c, true),
            None => (Caller::anonymous(access.anonymous), false),
        },
    };
    // Without a tokens file a browser opening a dashboard page gets an
    // anonymous session, so that its forms carry a CSRF token too.
    let mut new_session = None;
    if !by_session && access.tokens.is_none() && method == Method::GET && wants_html(&req) {
        let (id, csrf) = access.new_session(None);
        new_session = Some(id);
        let mut c = caller.clone();
        c.csrf = Some(csrf);
        req.extensions_mut().insert(c);
    }
    if let Some(scope) = guard::required_scope(&method, &path) {
        if !caller.scopes.grants(scope) {
            let signed_in = by_session || caller.name != "anonymous";
            if !signed_in && method == Method::GET && wants_html(&req) {
                let next_path = req
                    .uri()
                    .path_and_query()
                    .map_or("/".to_string(), |p| p.to_string());
                let to = format!(
                    "/login?next={}",
                    percent_encoding::utf8_percent_encode(
                        &next_path,
                        percent_encoding::NON_ALPHANUMERIC
                    )
                );
                return (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response();
            }
            let (status, who) = if signed_in {
                (
                    StatusCode::FORBIDDEN,
                    format!("token {:?} lacks", caller.name),
                )
            } else {
                (
                    StatusCode::UNAUTHORIZED,
                    "this request needs a token with".to_string(),
                )
            };
            return refuse(
                status,
                format!(
                    "{who} scope \"{scope}\" ({method} {path}); present a token as \
                     Authorization: Bearer <token> or X-Laneway-Token"
                ),
                Some(scope),
            );
        }
    }
    let changes_state = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
    // (signing in or out needs no CSRF token: the first has no session
    // yet, and a forged sign-out only ends a session)
    if by_session && changes_state && path != "/login" && path != "/logout" {
        let expected = caller.csrf.clone().unwrap_or_default();
        let header_token = req
            .headers()
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let ok = match header_token {
            Some(t) => constant_eq(&t, &expected),
            None => {
                let (parts, body) = req.into_parts();
                let bytes = match axum::body::to_bytes(body, MAX_FORM).await {
                    Ok(b) => b,
                    Err(_) => {
                        return refuse(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            format!("form larger than {MAX_FORM} bytes"),
                            None,
                        )
                    }
                };
                let field = form_field(&bytes, "csrf");
                req = Request::from_parts(parts, Body::from(bytes));
                field.is_some_and(|t| constant_eq(&t, &expected))
            }
        };
        if !ok {
            return refuse(
                StatusCode::FORBIDDEN,
                "missing or wrong CSRF token: reload the page and submit the form again".into(),
                None,
            );
        }
    }
    if req.extensions().get::<Caller>().is_none() {
        req.extensions_mut().insert(caller);
    }
    let mut resp = next.run(req).await;
    if let Some(id) = new_session {
        if let Ok(v) = HeaderValue::from_str(&session_cookie(&id)) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    resp
}

fn constant_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    !b.is_empty() && a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The value of `name` in a urlencoded form body.
pub fn form_field(body: &[u8], name: &str) -> Option<String> {
    form_urlencoded(body)
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// The pairs of a urlencoded form body, decoded.
pub fn form_urlencoded(body: &[u8]) -> impl Iterator<Item = (String, String)> + '_ {
    body.split(|&b| b == b'&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let mut it = pair.splitn(2, |&b| b == b'=');
            let dec = |s: &[u8]| {
                let plus: Vec<u8> = s
                    .iter()
                    .map(|&b| if b == b'+' { b' ' } else { b })
                    .collect();
                percent_encoding::percent_decode(&plus)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            let k = dec(it.next().unwrap_or(b""));
            let v = dec(it.next().unwrap_or(b""));
            (k, v)
        })
}

/// The `Set-Cookie` value of a new session.
pub fn session_cookie(id: &str) -> String {
    format!(
        "{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_IDLE.as_secs()
    )
}

/// The `Set-Cookie` value that ends a session in the browser.
pub fn clear_session_cookie() -> String {
    format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// `GET /login`: the dashboard's sign-in form (a token's secret).
pub async fn login_page(
    State(access): State<Arc<Access>>,
    axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>,
) -> Response {
    let next = safe_next(q.get("next").map(String::as_str));
    login_form(&access, &next, None, StatusCode::OK)
}

fn login_form(access: &Access, next: &str, error: Option<&str>, status: StatusCode) -> Response {
    let page = maud::html! {
        (maud::DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Sign in · laneway" }
                link rel="stylesheet" href="/assets/laneway.css";
            }
            body {
                main class="login" {
                    h1 { "laneway" }
                    @if access.requires_tokens() {
                        p { "Sign in with an admin token (from " code { "[admin] tokens_file" } ")." }
                    } @else {
                        p { "This laneway has no tokens file: signing in only starts a dashboard session." }
                    }
                    @if let Some(e) = error {
                        p class="error" id="login-error" { (e) }
                    }
                    form id="login" method="post" action="/login" {
                        input type="hidden" name="next" value=(next);
                        label for="token" { "Token" }
                        input id="token" type="password" name="token" autocomplete="current-password" autofocus;
                        button type="submit" { "Sign in" }
                    }
                }
            }
        }
    };
    (status, page).into_response()
}

/// A relative path to return to after signing in (never another site).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.starts_with("/\\")
                && !n.chars().any(char::is_control) =>
        {
            n.to_string()
        }
        _ => "/".to_string(),
    }
}

/// `POST /login` (form: `token`, `next`): starts a session.
pub async fn login(State(access): State<Arc<Access>>, body: axum::body::Bytes) -> Response {
    let token = form_field(&body, "token").unwrap_or_default();
    let next = safe_next(form_field(&body, "next").as_deref());
    match access.sign_in(token.trim()) {
        Some((id, caller)) => {
            tracing::info!(target: "laneway::audit", who = %caller.name, "dashboard sign-in");
            (
                StatusCode::SEE_OTHER,
                [
                    (header::LOCATION, next),
                    (header::SET_COOKIE, session_cookie(&id)),
                ],
            )
                .into_response()
        }
        None => login_form(
            &access,
            &next,
            Some("That token is not valid."),
            StatusCode::UNAUTHORIZED,
        ),
    }
}

/// `POST /logout`: ends the session.
pub async fn logout(State(access): State<Arc<Access>>, req: Request) -> Response {
    if let Some(id) = cookie(&req, SESSION_COOKIE) {
        access.sign_out(id);
    }
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/login".to_string()),
            (header::SET_COOKIE, clear_session_cookie()),
        ],
    )
        .into_response()
}

/// The admin application: the routes of [`super::router`] plus sign-in,
/// behind [`check`].
pub fn app(control: Arc<crate::control::Control>, access: Arc<Access>) -> axum::Router {
    use axum::routing::{get, post};
    let sign_in = axum::Router::new()
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .with_state(access.clone());
    sign_in
        .merge(super::router(control))
        .layer(axum::middleware::from_fn_with_state(access, check))
}
