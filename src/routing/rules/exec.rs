//! The rewrite engine on the request path: nginx's phases for rules that use
//! nginx features (scripts, maps, nested and named locations, `proxy_pass`,
//! `try_files`). Pure and synchronous, like the rest of `routing/`.
//!
//! The phases, as `ngx_http_core_run_phases` runs them:
//! 1. server rewrite (the server's script);
//! 2. find location (nested locations searched as nginx does: static, then
//!    the nested ones of the chosen prefix, then the level's regexes unless
//!    the prefix was `^~`);
//! 3. location rewrite (its script); a changed URI (`rewrite … last`, or a
//!    flagless rewrite) goes back to 2, at most 10 times, then 500;
//! 4. `try_files` (no files here, so its last item: a named location, a URI
//!    (internal redirect back to 1) or `=code`);
//! 5. content: `proxy_pass` with nginx's URI rules, a `return`, or 404.
//!
//! Per request this allocates the working URI and the variable table; the
//! compiled program is shared and immutable.

use std::cell::RefCell;
use std::sync::Arc;

use super::errpage::ErrorPage;
use super::host::{self, HostMatch};
use super::location::{LocationTable, StaticMatch};
use super::pattern::Rx;
use super::script::{Cond, Engine, Flag, PassKind, ProxyPass, RegexRef, Step};
use super::template::{push_capture, CaptureState, Ctx, Template};
use super::uri::{self, Escape};
use super::{
    auto_redirect_target, escape_unsafe_query, not_found, render_headers, Action, Chosen, Decision,
    Location, RequestInfo, RuleSet, Server, TryLast, EMPTY_REWRITE,
};

/// nginx `NGX_HTTP_MAX_URI_CHANGES` + 1.
const URI_CHANGES: u8 = 11;

/// Numbered captures of the last regex that matched, owned.
#[derive(Debug)]
struct OwnedCaps {
    hay: Vec<u8>,
    groups: Vec<Option<(usize, usize)>>,
}

/// The engine's per-request variables: `set`/`map` values and named
/// captures by slot, and the numbered captures.
pub(crate) struct Vars<'a> {
    engine: &'a Engine,
    slots: RefCell<Vec<Option<Vec<u8>>>>,
    numbered: RefCell<Option<OwnedCaps>>,
}

impl<'a> Vars<'a> {
    fn new(engine: &'a Engine) -> Vars<'a> {
        Vars {
            engine,
            slots: RefCell::new(vec![None; engine.slots.len()]),
            numbered: RefCell::new(None),
        }
    }

    pub(crate) fn capture_into(&self, n: usize, out: &mut Vec<u8>, escape: bool) {
        if let Ok(caps) = self.numbered.try_borrow() {
            if let Some(c) = caps.as_ref() {
                if let Some(Some((s, e))) = c.groups.get(n) {
                    push_capture(out, &c.hay[*s..*e], escape);
                }
            }
        }
    }

    pub(crate) fn slot_into(&self, i: usize, ctx: &Ctx<'_>, out: &mut Vec<u8>, _escape: bool) {
        if let Ok(slots) = self.slots.try_borrow() {
            if let Some(Some(v)) = slots.get(i) {
                out.extend_from_slice(v);
                return;
            }
        }
        let Some(Some(m)) = self.engine.slot_map.get(i) else {
            return; // an unset variable is empty (nginx warns)
        };
        let v = self.eval_map(*m, ctx);
        out.extend_from_slice(&v);
        if let Ok(mut slots) = self.slots.try_borrow_mut() {
            slots[i] = Some(v);
        }
    }

    fn eval_map(&self, mi: usize, ctx: &Ctx<'_>) -> Vec<u8> {
        let m = &self.engine.maps[mi];
        let mut src = Vec::new();
        m.source.render_into(ctx, &mut src, false);
        if m.hostnames && src.last() == Some(&b'.') {
            src.pop();
        }
        let lower = src.to_ascii_lowercase();
        let mut value = m.exact.get(lower.as_slice()).copied();
        if value.is_none() && !src.is_empty() {
            if let Some(w) = &m.wild {
                if let HostMatch::Server(v) = w.find(&String::from_utf8_lossy(&lower)) {
                    value = Some(v);
                }
            }
        }
        if value.is_none() && !src.is_empty() {
            if let Some(rx) = m.regexes.first(&src) {
                let (v, slots) = &m.regex_values[rx];
                self.capture(m.regexes.get(rx), slots, &src);
                value = Some(*v);
            }
        }
        match value.or(m.default) {
            Some(v) => m.values[v].render(ctx).into_bytes(),
            None => Vec::new(),
        }
    }

    /// Runs `rx` on `hay`; on a match stores its groups as the numbered
    /// captures and its named groups in their slots.
    fn capture(&self, rx: &Rx, slots: &[(usize, usize)], hay: &[u8]) -> bool {
        let mut locs = rx.re.capture_locations();
        if rx.re.captures_read(&mut locs, hay).is_none() {
            return false;
        }
        let groups: Vec<Option<(usize, usize)>> = (0..locs.len()).map(|i| locs.get(i)).collect();
        if let Ok(mut s) = self.slots.try_borrow_mut() {
            for &(g, slot) in slots {
                let v = groups
                    .get(g)
                    .copied()
                    .flatten()
                    .map(|(a, b)| hay[a..b].to_vec())
                    .unwrap_or_default();
                s[slot] = Some(v);
            }
        }
        if let Ok(mut n) = self.numbered.try_borrow_mut() {
            *n = Some(OwnedCaps {
                hay: hay.to_vec(),
                groups,
            });
        }
        true
    }

    fn clear_numbered(&self) {
        if let Ok(mut n) = self.numbered.try_borrow_mut() {
            *n = None;
        }
    }
}

/// The request as the phases change it.
struct St<'q> {
    uri: Vec<u8>,
    args: String,
    request_uri: &'q str,
    /// The original path had `%` escapes / a `+` (nginx quoted_uri, plus_in_uri).
    quoted: bool,
    plus: bool,
    internal: bool,
    valid_unparsed: bool,
    valid_location: bool,
    uri_changed: bool,
    uri_changes: u8,
    /// nginx `err_status`: the status the answer goes out with (`0`: its own).
    err_status: u16,
    /// nginx `r->error_page`: an error page is in use and
    /// `recursive_error_pages` was off, so no other one applies.
    error_page: bool,
    /// An error page redirected to a URI: the method is now GET.
    as_get: bool,
    /// Proxy decisions reached so far (indexes `upstream_statuses`).
    proxied: usize,
}

/// What the phases ended with.
enum Out<'r> {
    /// A response sent as it is (`ngx_http_send_response`); `err_status`
    /// replaces its status when set.
    Send(Decision<'r>),
    /// The request is finalized with a status (`ngx_http_finalize_request`
    /// with a special response): the `error_page` in force at `clcf` may
    /// take over.
    Special {
        status: u16,
        clcf: &'r Location,
        kind: Special,
    },
    /// Answered as it is, never by an error page (an internal redirect
    /// cycle: nginx has no URI changes left to spend on one).
    Final(Decision<'r>),
}

/// The answer of a special response no error page takes over.
enum Special {
    /// A status with this body.
    Body(String),
    /// No location or no content: laneway's 404 naming host and path.
    NotFound,
    /// A redirect to this `Location`.
    Redirect(String),
}

/// Where the phases (re)start.
#[derive(Clone, Copy)]
enum Entry {
    /// The server rewrite phase (a new request, an internal redirect).
    Server,
    /// The location rewrite phase of a named location.
    Named(usize),
}

/// How a script ended.
enum Flow<'r> {
    /// Ran to the end (or `last`, which sets `uri_changed`).
    Done,
    Answer(Out<'r>),
}

struct Run<'r, 'q> {
    server: &'r Server,
    req: &'q RequestInfo<'q>,
    host: &'q str,
    vars: &'q Vars<'r>,
    st: St<'q>,
    /// `proxy_pass` of the last matching `if` block of the location.
    if_proxy: Option<&'r Arc<ProxyPass>>,
}

pub(super) fn route<'r>(
    rules: &'r RuleSet,
    engine: &'r Engine,
    req: &RequestInfo<'_>,
) -> Decision<'r> {
    let target = match uri::parse_target(req.target) {
        Ok(t) => t,
        Err(e) => return Decision::BadRequest(e),
    };
    let host = match host::normalise_host(req.host) {
        Ok(h) => h,
        Err(e) => return Decision::BadRequest(e),
    };
    let vars = Vars::new(engine);
    let server_idx = match rules.choose_server(&host, req.port) {
        Chosen::None => return not_found(&host, &target.uri),
        Chosen::Server(s) => s,
        Chosen::Regex { server, rx, global } => {
            let slots = engine.host_rx_slots.get(global).map_or(&[][..], |s| &s[..]);
            vars.capture(rx, slots, host.as_bytes());
            server
        }
    };
    let server = &rules.servers[server_idx];
    let host_str: &str = if host.is_empty() {
        &server.fallback_host
    } else {
        &host
    };
    let mut run = Run {
        server,
        req,
        host: host_str,
        vars: &vars,
        st: St {
            uri: target.uri.to_vec(),
            args: target.args.to_string(),
            request_uri: target.request_uri,
            quoted: target.quoted,
            plus: target.plus,
            internal: false,
            valid_unparsed: true,
            valid_location: true,
            uri_changed: false,
            uri_changes: URI_CHANGES,
            err_status: 0,
            error_page: false,
            as_get: false,
            proxied: 0,
        },
        if_proxy: None,
    };
    run.request()
}

/// Result of a location lookup at one level.
enum Found {
    None,
    /// Exact or regex: final.
    Final(usize),
    /// A prefix: regexes of outer levels may still win.
    Inclusive(usize),
    Redirect(usize),
}

/// What an error page asks for.
enum Next<'r> {
    Done(Decision<'r>),
    Enter(Entry),
}

impl<'r, 'q> Run<'r, 'q> {
    fn ctx(&self) -> Ctx<'_> {
        Ctx {
            host: self.host,
            uri: &self.st.uri,
            args: &self.st.args,
            request_uri: self.st.request_uri,
            scheme: self.req.scheme,
            lane: self.req.lane,
            headers: self.req.headers,
            caps: CaptureState::default(),
            ext: Some(self.vars),
        }
    }

    fn render(&self, t: &Template) -> String {
        t.render(&self.ctx())
    }

    fn error500(&self, location: &'r Location) -> Decision<'r> {
        Decision::Return {
            server: self.server,
            location,
            status: 500,
            body: String::new(),
            headers: Vec::new(),
        }
    }

    /// Runs the phases until an answer, through the error pages it meets.
    fn request(&mut self) -> Decision<'r> {
        let mut entry = Entry::Server;
        loop {
            match self.phases(entry) {
                Out::Final(d) => return d,
                Out::Send(d) => return self.send(d),
                Out::Special { status, clcf, kind } => match self.special(status, clcf, kind) {
                    Next::Done(d) => return d,
                    Next::Enter(e) => entry = e,
                },
            }
        }
    }

    /// From the server rewrite phase (start, and after an internal
    /// redirect), or from a named location's rewrite phase.
    fn phases(&mut self, entry: Entry) -> Out<'r> {
        let mut preset = match entry {
            Entry::Server => None,
            Entry::Named(l) => Some(l),
        };
        'restart: loop {
            if preset.is_none() {
                let ctxloc = &self.server.context;
                if let Flow::Answer(o) = self.script(&self.server.script, ctxloc, false) {
                    return o;
                }
            }
            loop {
                // find config
                let (li, redirect) = match preset.take() {
                    Some(l) => (l, false),
                    None => {
                        self.st.uri_changed = false;
                        match self.find(&self.server.table) {
                            Found::None => {
                                return Out::Special {
                                    status: 404,
                                    clcf: &self.server.context,
                                    kind: Special::NotFound,
                                }
                            }
                            Found::Redirect(l) => (l, true),
                            Found::Final(l) | Found::Inclusive(l) => (l, false),
                        }
                    }
                };
                let location = &self.server.locations[li];
                let ext = location.nginx.as_deref();
                if ext.is_some_and(|e| e.internal) && !self.st.internal {
                    return Out::Special {
                        status: 404,
                        clcf: location,
                        kind: Special::NotFound,
                    };
                }
                if redirect {
                    return Out::Special {
                        status: 301,
                        clcf: location,
                        kind: Special::Redirect(auto_redirect_target(
                            &location.path,
                            &self.st.args,
                        )),
                    };
                }
                // location rewrite
                self.if_proxy = None;
                if let Some(e) = ext {
                    if let Flow::Answer(o) = self.script(&e.script, location, true) {
                        return o;
                    }
                }
                // post rewrite
                if self.st.uri_changed {
                    if let Some(o) = self.count_change(location) {
                        return o;
                    }
                    continue;
                }
                // try_files: laneway serves no files, so the last item decides
                match ext.and_then(|e| e.try_files.as_ref()) {
                    None => {}
                    Some(TryLast::Code(code)) if *code >= 300 => {
                        return Out::Special {
                            status: *code,
                            clcf: location,
                            kind: Special::Body(String::new()),
                        }
                    }
                    Some(TryLast::Code(code)) => {
                        return Out::Send(Decision::Return {
                            server: self.server,
                            location,
                            status: *code,
                            body: String::new(),
                            headers: Vec::new(),
                        })
                    }
                    Some(TryLast::Named(n)) => {
                        if let Some(o) = self.count_change(location) {
                            return o;
                        }
                        self.st.internal = true;
                        self.st.uri_changed = false;
                        preset = Some(*n);
                        continue;
                    }
                    Some(TryLast::Uri(t)) => {
                        let text = self.render(t);
                        let (path, args) = text.split_once('?').unwrap_or((&text, ""));
                        self.st.uri = path.as_bytes().to_vec();
                        self.st.args = args.to_string();
                        if let Some(o) = self.count_change(location) {
                            return o;
                        }
                        self.st.internal = true;
                        self.st.valid_unparsed = false;
                        self.st.valid_location = true;
                        continue 'restart;
                    }
                }
                return self.content(location);
            }
        }
    }

    /// nginx counts URI changes and internal redirects: the 11th is a 500,
    /// which no error page takes over.
    fn count_change(&mut self, location: &'r Location) -> Option<Out<'r>> {
        self.st.uri_changes -= 1;
        (self.st.uri_changes == 0).then(|| Out::Final(self.error500(location)))
    }

    /// A response sent as it is, with the error page's status when one
    /// is in force.
    fn send(&self, mut d: Decision<'r>) -> Decision<'r> {
        let err = self.st.err_status;
        match &mut d {
            Decision::Return { status, .. } if err != 0 => *status = err,
            Decision::Proxy { status, .. } if err != 0 => *status = Some(err),
            _ => {}
        }
        d
    }

    /// `ngx_http_special_response_handler`: the error page of `clcf` for
    /// `status`, unless one is already in use (and `recursive_error_pages`
    /// is off) or no URI change is left; otherwise the status itself.
    fn special(&mut self, status: u16, clcf: &'r Location, kind: Special) -> Next<'r> {
        self.st.err_status = status;
        let ext = clcf.nginx.as_deref();
        if let Some((pages, e)) = ext.and_then(|e| e.errors.as_ref().map(|p| (p, e))) {
            if !self.st.error_page && self.st.uri_changes != 0 {
                if !e.recursive {
                    self.st.error_page = true;
                }
                if let Some(page) = pages.find(status) {
                    return self.error_page(page, clcf);
                }
            }
        }
        Next::Done(match kind {
            Special::NotFound => not_found(self.host, &self.st.uri),
            Special::Redirect(to) => Decision::Redirect {
                server: self.server,
                location: clcf,
                status,
                to,
            },
            Special::Body(body) => Decision::Return {
                server: self.server,
                location: clcf,
                status,
                body,
                headers: Vec::new(),
            },
        })
    }

    /// `ngx_http_send_error_page`: an internal redirect to a URI (as GET)
    /// or to a named location, or a redirect to a URL.
    fn error_page(&mut self, page: &'r ErrorPage, clcf: &'r Location) -> Next<'r> {
        if let Some(o) = page.overwrite {
            self.st.err_status = o;
        }
        let text = self.render(&page.target);
        if text.starts_with('/') {
            let (path, args) = text.split_once('?').unwrap_or((&text, ""));
            let (path, args) = (path.as_bytes().to_vec(), args.to_string());
            self.st.as_get = true;
            self.st.uri_changes -= 1;
            if self.st.uri_changes == 0 {
                return Next::Done(self.error500(clcf));
            }
            self.st.uri = path;
            self.st.args = args;
            self.st.internal = true;
            self.st.valid_unparsed = false;
            self.st.valid_location = true;
            return Next::Enter(Entry::Server);
        }
        if text.starts_with('@') {
            self.st.uri_changes -= 1;
            if self.st.uri_changes == 0 {
                return Next::Done(self.error500(clcf));
            }
            let name = page.named.as_deref().unwrap_or(&text);
            let Some(l) = self.server.named(name) else {
                // the compiler checks literal names; nginx answers 500
                return Next::Done(self.error500(clcf));
            };
            self.st.internal = true;
            self.st.uri_changed = false;
            return Next::Enter(Entry::Named(l));
        }
        let status = page
            .overwrite
            .filter(|s| matches!(s, 301 | 302 | 303 | 307 | 308))
            .unwrap_or(302);
        self.st.err_status = status;
        let mut to = text.into_bytes();
        uri::escape_controls(&mut to);
        Next::Done(Decision::Redirect {
            server: self.server,
            location: clcf,
            status,
            to: uri::into_string(to),
        })
    }

    /// `ngx_http_core_find_location` over one level of locations.
    fn find(&self, table: &'r LocationTable) -> Found {
        let mut found = Found::None;
        let mut noregex = false;
        match table.find_static(&self.st.uri) {
            StaticMatch::Exact(l) => return Found::Final(l),
            StaticMatch::AutoRedirect(l) => return Found::Redirect(l),
            StaticMatch::Prefix(l, nr) => {
                found = Found::Inclusive(l);
                noregex = nr;
                if let Some(children) = self.children(l) {
                    match self.find(children) {
                        f @ (Found::Final(_) | Found::Redirect(_)) => return f,
                        f @ Found::Inclusive(_) => found = f,
                        Found::None => {}
                    }
                }
            }
            StaticMatch::None => {}
        }
        if !noregex {
            if let Some((l, rx)) = table.find_regex(&self.st.uri) {
                let slots = self.server.locations[l]
                    .nginx
                    .as_ref()
                    .map_or(&[][..], |e| &e.rx_slots[..]);
                self.vars.capture(table.regex(rx), slots, &self.st.uri);
                if let Some(children) = self.children(l) {
                    return match self.find(children) {
                        Found::Final(x) | Found::Inclusive(x) | Found::Redirect(x) => {
                            Found::Final(x)
                        }
                        Found::None => Found::Final(l),
                    };
                }
                return Found::Final(l);
            }
        }
        found
    }

    fn children(&self, l: usize) -> Option<&'r LocationTable> {
        self.server.locations[l]
            .nginx
            .as_ref()
            .and_then(|e| e.children.as_ref())
    }

    /// Runs a rewrite script. `in_location`: the location phase (an `if`
    /// may switch the `proxy_pass`).
    fn script(&mut self, steps: &'r [Step], location: &'r Location, in_location: bool) -> Flow<'r> {
        match self.steps(steps, location, in_location) {
            Ok(_) => Flow::Done,
            Err(d) => Flow::Answer(d),
        }
    }

    /// `Ok(true)`: the script stopped (`last`, `break`); `Err`: an answer.
    fn steps(
        &mut self,
        steps: &'r [Step],
        location: &'r Location,
        in_location: bool,
    ) -> Result<bool, Out<'r>> {
        for step in steps {
            match step {
                Step::Rewrite {
                    re,
                    target,
                    whole,
                    flag,
                    redirect,
                } => {
                    if !self.vars.capture(&re.rx, &re.slots, &self.st.uri.clone()) {
                        self.vars.clear_numbered();
                        continue;
                    }
                    let escape = self.st.quoted || self.st.plus;
                    if let Some(status) = redirect {
                        let mut out = Vec::new();
                        whole.render_into(&self.ctx(), &mut out, escape);
                        let mut to = unescape_redirect(&out);
                        if target.keep_args && !self.st.args.is_empty() {
                            to.push(if target.args.is_some() { b'&' } else { b'?' });
                            to.extend_from_slice(self.st.args.as_bytes());
                        }
                        uri::escape_controls(&mut to);
                        return Err(Out::Special {
                            status: *status,
                            clcf: location,
                            kind: Special::Redirect(uri::into_string(to)),
                        });
                    }
                    let (path, args) = {
                        let ctx = self.ctx();
                        let mut path = Vec::with_capacity(ctx.uri.len() + 16);
                        target.path.render_into(&ctx, &mut path, false);
                        let args = match &target.args {
                            Some(t) => {
                                let mut a = Vec::new();
                                t.render_into(&ctx, &mut a, escape);
                                if target.keep_args && !ctx.args.is_empty() {
                                    a.push(b'&');
                                    a.extend_from_slice(ctx.args.as_bytes());
                                }
                                uri::into_string(a)
                            }
                            None if target.keep_args => ctx.args.to_string(),
                            None => String::new(),
                        };
                        (path, args)
                    };
                    if path.is_empty() {
                        return Err(Out::Special {
                            status: 500,
                            clcf: location,
                            kind: Special::Body(EMPTY_REWRITE.to_string()),
                        });
                    }
                    self.st.uri = path;
                    self.st.args = args;
                    self.st.internal = true;
                    self.st.valid_unparsed = false;
                    match flag {
                        Flag::Break => {
                            self.st.valid_location = false;
                            self.st.uri_changed = false;
                            return Ok(true);
                        }
                        Flag::Last => {
                            self.st.uri_changed = true;
                            return Ok(true);
                        }
                        _ => self.st.uri_changed = true,
                    }
                }
                Step::Set { slot, value } => {
                    let v = self.render(value).into_bytes();
                    if let Ok(mut s) = self.vars.slots.try_borrow_mut() {
                        s[*slot] = Some(v);
                    }
                }
                Step::Return { status, text } => {
                    return Err(self.ret(location, *status, text.as_ref()));
                }
                Step::Break => {
                    if self.st.uri_changed {
                        self.st.valid_location = false;
                        self.st.uri_changed = false;
                    }
                    return Ok(true);
                }
                Step::If { cond, body, proxy } => {
                    if self.cond(cond) {
                        if in_location {
                            // the `if` block's configuration is now in force
                            self.if_proxy = proxy.as_ref();
                        }
                        if self.steps(body, location, in_location)? {
                            return Ok(true);
                        }
                    }
                }
            }
        }
        Ok(false)
    }

    /// `return`: a redirect, or a status without text from 400 on, is
    /// finalized with its status (an error page may take over); anything
    /// else is sent as it is.
    fn ret(&self, location: &'r Location, status: u16, text: Option<&Template>) -> Out<'r> {
        let text = text.map(|t| self.render(t));
        if matches!(status, 301 | 302 | 303 | 307 | 308) {
            let kind = match text {
                Some(to) => {
                    let mut b = to.into_bytes();
                    uri::escape_controls(&mut b);
                    Special::Redirect(uri::into_string(b))
                }
                None => Special::Body(String::new()),
            };
            return Out::Special {
                status,
                clcf: location,
                kind,
            };
        }
        match text {
            None if status >= 400 => Out::Special {
                status,
                clcf: location,
                kind: Special::Body(String::new()),
            },
            text => Out::Send(Decision::Return {
                server: self.server,
                location,
                status,
                body: text.unwrap_or_default(),
                headers: Vec::new(),
            }),
        }
    }

    fn cond(&self, c: &Cond) -> bool {
        match c {
            Cond::Var(t) => {
                let v = self.render(t);
                !(v.is_empty() || v == "0")
            }
            Cond::Eq(a, b, neg) => (self.render(a) == self.render(b)) != *neg,
            Cond::Regex(t, re, neg) => {
                let v = self.render(t);
                let m = self.regex_test(re, v.as_bytes());
                m != *neg
            }
            Cond::File(neg) => *neg,
        }
    }

    fn regex_test(&self, re: &RegexRef, hay: &[u8]) -> bool {
        if self.vars.capture(&re.rx, &re.slots, hay) {
            true
        } else {
            self.vars.clear_numbered();
            false
        }
    }

    /// The content phase of the chosen location.
    fn content(&mut self, location: &'r Location) -> Out<'r> {
        let pass = self
            .if_proxy
            .or_else(|| location.nginx.as_ref().and_then(|e| e.proxy.as_ref()));
        if let Some(pass) = pass {
            return self.proxy(location, pass);
        }
        let ctx = self.ctx();
        match &location.action {
            Action::Proxy { service } => self.proxy_to(location, service, None, false),
            Action::Return {
                status,
                body,
                headers,
            } => {
                let body = body.render(&ctx);
                if body.is_empty() && headers.is_empty() && *status >= 400 {
                    // as nginx `return 404;`
                    return Out::Special {
                        status: *status,
                        clcf: location,
                        kind: Special::Body(body),
                    };
                }
                Out::Send(Decision::Return {
                    server: self.server,
                    location,
                    status: *status,
                    body,
                    headers: render_headers(headers, &ctx, false),
                })
            }
            Action::Redirect { status, to } => Out::Special {
                status: *status,
                clcf: location,
                kind: Special::Redirect(to.render_header(&ctx)),
            },
            // nginx would serve files from its root; laneway has none
            Action::Engine => Out::Special {
                status: 404,
                clcf: location,
                kind: Special::NotFound,
            },
        }
    }

    fn proxy(&mut self, location: &'r Location, pass: &'r ProxyPass) -> Out<'r> {
        match &pass.kind {
            PassKind::Fixed { service, uri } => {
                self.proxy_to(location, service, uri.as_deref(), false)
            }
            PassKind::Dynamic(t) => {
                let url = self.render(t);
                let rest = url
                    .strip_prefix("http://")
                    .or_else(|| url.strip_prefix("https://"))
                    .unwrap_or(&url);
                let (host, uri) = match rest.find(['/', '?']) {
                    Some(i) => (&rest[..i], &rest[i..]),
                    None => (rest, ""),
                };
                let engine = self.vars.engine;
                let Some(service) = engine.upstreams.get(host.to_ascii_lowercase().as_str()) else {
                    return Out::Special {
                        status: 502,
                        clcf: location,
                        kind: Special::Body(format!(
                            "laneway: proxy_pass {:?} names {host:?}, which is no upstream mapped to a service\n",
                            pass.source
                        )),
                    };
                };
                if uri.is_empty() {
                    self.proxy_to(location, service, None, false)
                } else {
                    let u = if uri.starts_with('?') {
                        format!("/{uri}")
                    } else {
                        uri.to_string()
                    };
                    self.proxy_to(location, service, Some(u.as_bytes()), true)
                }
            }
        }
    }

    /// nginx's upstream request line: `uri_part` replaces the location
    /// prefix while the location is still valid; `verbatim`: a URI built
    /// from variables, sent as it is.
    fn proxy_to(
        &mut self,
        location: &'r Location,
        service: &'r Arc<str>,
        uri_part: Option<&[u8]>,
        verbatim: bool,
    ) -> Out<'r> {
        // nginx `proxy_intercept_errors`: the error pages of the location
        // (or of the `if` block in force, which inherits them)
        let intercept = location
            .nginx
            .as_deref()
            .filter(|e| e.intercept)
            .and_then(|e| e.errors.as_deref())
            .map(|p| p.codes())
            .filter(|c| !c.is_empty());
        if let Some(&status) = self.req.upstream_statuses.get(self.st.proxied) {
            // replaying a request whose upstream answered `status` here
            self.st.proxied += 1;
            if intercept.is_some_and(|c| c.contains(status)) {
                return Out::Special {
                    status,
                    clcf: location,
                    kind: Special::Body(format!(
                        "laneway: the upstream answered {status} inside an error page\n"
                    )),
                };
            }
        }
        let upstream_target = if verbatim {
            let mut b = uri_part.unwrap_or_default().to_vec();
            uri::escape_controls(&mut b);
            Some(uri::into_string(b))
        } else if uri_part.is_none() && self.st.valid_unparsed {
            None
        } else {
            let loc_len = match uri_part {
                Some(_) if self.st.valid_location => location.path.len().min(self.st.uri.len()),
                _ => 0,
            };
            let mut out = Vec::with_capacity(self.st.uri.len() + self.st.args.len() + 16);
            if self.st.valid_location {
                out.extend_from_slice(uri_part.unwrap_or_default());
            }
            let rest = &self.st.uri[loc_len..];
            if self.st.quoted || self.st.internal {
                uri::escape_into(&mut out, rest, Escape::Uri);
            } else {
                out.extend_from_slice(rest);
                uri::escape_controls(&mut out);
            }
            if !self.st.args.is_empty() {
                out.push(b'?');
                escape_unsafe_query(&mut out, self.st.args.as_bytes());
            }
            Some(uri::into_string(out))
        };
        let ctx = self.ctx();
        Out::Send(Decision::Proxy {
            server: self.server,
            location,
            service,
            upstream_target,
            set_headers: render_headers(&location.set_headers, &ctx, false),
            add_response_headers: render_headers(&location.add_response_headers, &ctx, true),
            status: None,
            intercept,
            as_get: self.st.as_get,
        })
    }
}

/// nginx `NGX_UNESCAPE_REDIRECT` over a redirect target: up to the first
/// `?`, `%XX` of a printable byte above `%` is decoded; the rest is kept.
fn unescape_redirect(src: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(src.len());
    let mut i = 0;
    while i < src.len() {
        let c = src[i];
        if c == b'?' {
            out.extend_from_slice(&src[i..]);
            break;
        }
        if c == b'%' && i + 2 < src.len() {
            let h = |b: u8| (b as char).to_digit(16);
            if let (Some(a), Some(b)) = (h(src[i + 1]), h(src[i + 2])) {
                let ch = (a * 16 + b) as u8;
                if ch > b'%' && ch < 0x7f {
                    out.push(ch);
                } else {
                    out.extend_from_slice(&src[i..i + 3]);
                }
                i += 3;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    out
}
