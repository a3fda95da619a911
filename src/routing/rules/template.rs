//! Templates with nginx variables (`$host`, `${name}`, `$1`…): parsed and
//! checked on the control plane, rendered on the request path.
//!
//! Syntax as nginx's script compiler: `$` then a digit `1`–`9` is a numbered
//! capture (one digit: `$12` is `$1` then `2`); otherwise a name of ASCII
//! letters, digits and `_`, optionally in braces. Variable names are
//! case-insensitive. A `$` not followed by a name is an error.
//!
//! Variables: `$host`, `$uri` (`$document_uri`), `$args` (`$query_string`),
//! `$is_args`, `$request_uri`, `$scheme`, `$lane`, `$http_<name>`,
//! `$cookie_<name>`, `$arg_<name>`, `$1`–`$9` and named regex captures.

use http::{HeaderMap, HeaderName};

use super::pattern::Captured;
use super::uri::{escape_into, Escape};

/// A variable a template refers to, resolved at compile time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Var {
    Host,
    Uri,
    Args,
    IsArgs,
    RequestUri,
    Scheme,
    Lane,
    Header(HeaderName),
    Cookie(Box<str>),
    Arg(Box<str>),
    Capture(usize),
    Named(Box<str>),
    /// A variable of the rewrite engine: `set`, `map` or a named capture.
    Slot(usize),
}

impl Var {
    fn is_capture(&self) -> bool {
        matches!(self, Var::Capture(_) | Var::Named(_) | Var::Slot(_))
    }
}

#[derive(Debug, Clone)]
enum Part {
    Lit(Box<[u8]>),
    Var(Var),
}

/// What a template may refer to besides the built-in variables.
#[derive(Debug, Default, Clone)]
pub(crate) struct Scope {
    /// Lowercased names of the named captures some regex in scope defines.
    pub names: Vec<Box<str>>,
    /// The most capture groups any regex in scope has: `$n` above it is an error.
    pub max_group: usize,
    /// Names the regex that numbered captures come from, for errors.
    pub what: &'static str,
    /// The rewrite engine's variables (lowercased names; index = slot), when
    /// the rules use it: `set` and `map` variables and every named capture.
    pub slots: Option<std::sync::Arc<[Box<str>]>>,
}

/// A template problem; `offset` is a byte offset into the template text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TemplateError {
    pub offset: usize,
    pub message: String,
}

/// A parsed template.
#[derive(Debug, Clone)]
pub struct Template {
    source: Box<str>,
    parts: Box<[Part]>,
    /// The text when the template has no variable.
    literal: Option<Box<str>>,
}

impl Template {
    /// The template as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// True when some part is a regex capture (numbered or named).
    pub(crate) fn uses_captures(&self) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, Part::Var(v) if v.is_capture()))
    }

    /// The engine slots this template reads.
    pub(crate) fn slots(&self) -> impl Iterator<Item = usize> + '_ {
        self.parts.iter().filter_map(|p| match p {
            Part::Var(Var::Slot(s)) => Some(*s),
            _ => None,
        })
    }

    /// Parses and checks a template against `scope`.
    pub(crate) fn parse(source: &str, scope: &Scope) -> Result<Template, TemplateError> {
        let parts = parse_parts(source, scope)?;
        Ok(Template::from_parts(source, parts))
    }

    fn from_parts(source: &str, parts: Vec<Part>) -> Template {
        let literal = match parts.as_slice() {
            [] => Some("".into()),
            [Part::Lit(l)] => std::str::from_utf8(l).ok().map(Into::into),
            _ => None,
        };
        Template {
            source: source.into(),
            parts: parts.into_boxed_slice(),
            literal,
        }
    }

    /// Renders to a `String`; a template without variables costs one copy.
    pub(crate) fn render(&self, ctx: &Ctx<'_>) -> String {
        if let Some(l) = &self.literal {
            return l.to_string();
        }
        let mut out = Vec::with_capacity(self.source.len() + 32);
        self.render_into(ctx, &mut out, false);
        super::uri::into_string(out)
    }

    /// Renders for an HTTP header value: control bytes are `%XX`-escaped.
    pub(crate) fn render_header(&self, ctx: &Ctx<'_>) -> String {
        if let Some(l) = &self.literal {
            return l.to_string();
        }
        let mut out = Vec::with_capacity(self.source.len() + 32);
        self.render_into(ctx, &mut out, false);
        super::uri::escape_controls(&mut out);
        super::uri::into_string(out)
    }

    /// Appends the rendering to `out`. With `escape_captures`, capture values
    /// are escaped as nginx does in the args part of a rewrite.
    pub(crate) fn render_into(&self, ctx: &Ctx<'_>, out: &mut Vec<u8>, escape_captures: bool) {
        for part in self.parts.iter() {
            match part {
                Part::Lit(l) => out.extend_from_slice(l),
                Part::Var(v) => ctx.append(v, out, escape_captures),
            }
        }
    }
}

/// The target of a `rewrite`: nginx splits the replacement at its first
/// literal `?` into path and args; a trailing `?` drops the request's args.
#[derive(Debug, Clone)]
pub(crate) struct RewriteTarget {
    pub path: Template,
    pub args: Option<Template>,
    /// Append the request's original args (no trailing `?`).
    pub keep_args: bool,
}

impl RewriteTarget {
    pub fn parse(source: &str, scope: &Scope) -> Result<RewriteTarget, TemplateError> {
        let (text, keep_args) = match source.strip_suffix('?') {
            Some(t) => (t, false),
            None => (source, true),
        };
        let parts = parse_parts(text, scope)?;
        let mut path = Vec::new();
        let mut args: Option<Vec<Part>> = None;
        for part in parts {
            match (&mut args, part) {
                (Some(a), p) => a.push(p),
                (None, Part::Lit(l)) => match l.iter().position(|&c| c == b'?') {
                    Some(q) => {
                        if q > 0 {
                            path.push(Part::Lit(l[..q].into()));
                        }
                        let mut a = Vec::new();
                        if q + 1 < l.len() {
                            a.push(Part::Lit(l[q + 1..].into()));
                        }
                        args = Some(a);
                    }
                    None => path.push(Part::Lit(l)),
                },
                (None, p) => path.push(p),
            }
        }
        let (path_src, args_src) = text.split_once('?').unwrap_or((text, ""));
        Ok(RewriteTarget {
            path: Template::from_parts(path_src, path),
            args: args.map(|a| Template::from_parts(args_src, a)),
            keep_args,
        })
    }

    pub fn uses_captures(&self) -> bool {
        self.path.uses_captures() || self.args.as_ref().is_some_and(Template::uses_captures)
    }
}

fn is_name_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

fn parse_parts(src: &str, scope: &Scope) -> Result<Vec<Part>, TemplateError> {
    let b = src.as_bytes();
    let mut parts = Vec::new();
    let mut lit_start = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'$' {
            i += 1;
            continue;
        }
        if lit_start < i {
            parts.push(Part::Lit(b[lit_start..i].into()));
        }
        let dollar = i;
        i += 1;
        let invalid = |at: usize, what: &str| TemplateError {
            offset: at,
            message: format!("invalid variable name in {src:?}: {what}"),
        };
        match b.get(i) {
            None => return Err(invalid(dollar, "\"$\" at the end")),
            Some(c @ b'1'..=b'9') => {
                parts.push(Part::Var(capture_var(
                    usize::from(c - b'0'),
                    dollar,
                    scope,
                )?));
                i += 1;
            }
            Some(b'{') => {
                let start = i + 1;
                let len = b[start..].iter().take_while(|&&c| is_name_byte(c)).count();
                if b.get(start + len) != Some(&b'}') {
                    return Err(TemplateError {
                        offset: dollar,
                        message: format!("the closing bracket in {src:?} variable is missing"),
                    });
                }
                if len == 0 {
                    return Err(invalid(dollar, "\"${}\""));
                }
                parts.push(Part::Var(resolve(&src[start..start + len], dollar, scope)?));
                i = start + len + 1;
            }
            Some(_) => {
                let len = b[i..].iter().take_while(|&&c| is_name_byte(c)).count();
                if len == 0 {
                    return Err(invalid(
                        dollar,
                        "\"$\" must be followed by a variable name (nginx has no escape for \"$\")",
                    ));
                }
                parts.push(Part::Var(resolve(&src[i..i + len], dollar, scope)?));
                i += len;
            }
        }
        lit_start = i;
    }
    if lit_start < b.len() {
        parts.push(Part::Lit(b[lit_start..].into()));
    }
    Ok(parts)
}

fn capture_var(n: usize, offset: usize, scope: &Scope) -> Result<Var, TemplateError> {
    if n > scope.max_group {
        return Err(TemplateError {
            offset,
            message: format!(
                "${n}: no capture group {n} in {} (capture groups: {})",
                scope.what, scope.max_group
            ),
        });
    }
    Ok(Var::Capture(n))
}

/// Resolves a variable name (as written, without `$`/braces).
fn resolve(name: &str, offset: usize, scope: &Scope) -> Result<Var, TemplateError> {
    let lower = name.to_ascii_lowercase();
    let unknown = |why: String| TemplateError {
        offset,
        message: why,
    };
    Ok(match lower.as_str() {
        "host" => Var::Host,
        "uri" | "document_uri" => Var::Uri,
        "args" | "query_string" => Var::Args,
        "is_args" => Var::IsArgs,
        "request_uri" => Var::RequestUri,
        "scheme" => Var::Scheme,
        "lane" => Var::Lane,
        d if d.len() == 1 && matches!(d.as_bytes()[0], b'1'..=b'9') => {
            capture_var(usize::from(d.as_bytes()[0] - b'0'), offset, scope)?
        }
        _ => {
            if let Some(h) = lower.strip_prefix("http_").filter(|h| !h.is_empty()) {
                let header = h.replace('_', "-");
                match HeaderName::from_bytes(header.as_bytes()) {
                    Ok(n) => Var::Header(n),
                    Err(_) => {
                        return Err(unknown(format!(
                            "${name}: {header:?} is not a valid header name"
                        )))
                    }
                }
            } else if let Some(c) = name
                .get(..7)
                .filter(|p| p.eq_ignore_ascii_case("cookie_"))
                .and(name.get(7..))
                .filter(|c| !c.is_empty())
            {
                Var::Cookie(c.into())
            } else if let Some(a) = lower.strip_prefix("arg_").filter(|a| !a.is_empty()) {
                Var::Arg(a.into())
            } else if let Some(i) = scope
                .slots
                .as_ref()
                .and_then(|s| s.iter().position(|n| **n == *lower))
            {
                Var::Slot(i)
            } else if scope.names.iter().any(|n| **n == *lower) {
                Var::Named(lower.into())
            } else {
                return Err(unknown(format!(
                    "unknown variable ${name}: expected $host, $uri, $args, $is_args, \
                     $request_uri, $scheme, $lane, $http_<header>, $cookie_<name>, \
                     $arg_<name>, $1..$9 or a named capture of the server name, \
                     location or rewrite regex"
                )));
            }
        }
    })
}

/// Which regex matches are visible to templates, nginx style: numbered
/// captures come from the last regex that matched (a rewrite that does not
/// match clears them); a named capture keeps the value of the last matching
/// regex that defines that name.
#[derive(Debug, Default)]
pub(crate) struct CaptureState<'a> {
    pub numbered: Option<&'a Captured<'a, 'a>>,
    /// Most recent first: rewrite, location, server name.
    pub named: [Option<&'a Captured<'a, 'a>>; 3],
}

/// Everything a template can read while rendering one request.
pub(crate) struct Ctx<'a> {
    pub host: &'a str,
    pub uri: &'a [u8],
    pub args: &'a str,
    pub request_uri: &'a str,
    pub scheme: &'a str,
    pub lane: &'a str,
    pub headers: &'a HeaderMap,
    pub caps: CaptureState<'a>,
    /// The rewrite engine's per-request variables, when the rules use it.
    pub ext: Option<&'a super::exec::Vars<'a>>,
}

impl Ctx<'_> {
    fn append(&self, var: &Var, out: &mut Vec<u8>, escape_captures: bool) {
        match var {
            Var::Host => out.extend_from_slice(self.host.as_bytes()),
            Var::Uri => out.extend_from_slice(self.uri),
            Var::Args => out.extend_from_slice(self.args.as_bytes()),
            Var::IsArgs => {
                if !self.args.is_empty() {
                    out.push(b'?');
                }
            }
            Var::RequestUri => out.extend_from_slice(self.request_uri.as_bytes()),
            Var::Scheme => out.extend_from_slice(self.scheme.as_bytes()),
            Var::Lane => out.extend_from_slice(self.lane.as_bytes()),
            Var::Header(name) => {
                let sep: &[u8] = if name == http::header::COOKIE {
                    b"; "
                } else {
                    b", "
                };
                for (i, v) in self.headers.get_all(name).iter().enumerate() {
                    if i > 0 {
                        out.extend_from_slice(sep);
                    }
                    out.extend_from_slice(v.as_bytes());
                }
            }
            Var::Cookie(name) => {
                if let Some(v) = cookie(self.headers, name.as_bytes()) {
                    out.extend_from_slice(v);
                }
            }
            Var::Arg(name) => {
                if let Some(v) = arg(self.args.as_bytes(), name.as_bytes()) {
                    out.extend_from_slice(v);
                }
            }
            Var::Capture(n) => {
                if let Some(c) = self.caps.numbered {
                    push_capture(out, c.group(*n), escape_captures);
                } else if let Some(ext) = self.ext {
                    ext.capture_into(*n, out, escape_captures);
                }
            }
            Var::Slot(i) => {
                if let Some(ext) = self.ext {
                    ext.slot_into(*i, self, out, escape_captures);
                }
            }
            Var::Named(name) => {
                let v = self.caps.named.iter().flatten().find_map(|c| c.named(name));
                if let Some(v) = v {
                    push_capture(out, v, escape_captures);
                }
            }
        }
    }
}

pub(crate) fn push_capture(out: &mut Vec<u8>, v: &[u8], escape: bool) {
    if escape {
        escape_into(out, v, Escape::Args);
    } else {
        out.extend_from_slice(v);
    }
}

/// nginx `$cookie_<name>`: the first `name=value` in the Cookie headers,
/// name compared case-insensitively, spaces around `=` skipped.
fn cookie<'h>(headers: &'h HeaderMap, name: &[u8]) -> Option<&'h [u8]> {
    for h in headers.get_all(http::header::COOKIE) {
        for item in h.as_bytes().split(|&c| c == b';') {
            let item = trim_start_spaces(item);
            if item.len() < name.len() || !item[..name.len()].eq_ignore_ascii_case(name) {
                continue;
            }
            if let Some(rest) = trim_start_spaces(&item[name.len()..]).strip_prefix(b"=") {
                return Some(trim_start_spaces(rest));
            }
        }
    }
    None
}

fn trim_start_spaces(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|&&c| c == b' ').count();
    &s[n..]
}

/// nginx `$arg_<name>`: the first `name=value` in the args, name compared
/// case-insensitively, value raw (not decoded).
fn arg<'a>(args: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    args.split(|&c| c == b'&').find_map(|kv| {
        (kv.len() > name.len()
            && kv[name.len()] == b'='
            && kv[..name.len()].eq_ignore_ascii_case(name))
        .then(|| &kv[name.len() + 1..])
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::rules::pattern::Rx;

    fn scope(names: &[&str], max_group: usize) -> Scope {
        Scope {
            names: names.iter().map(|n| Box::from(*n)).collect(),
            max_group,
            what: "the location regex",
            slots: None,
        }
    }

    fn ctx<'a>(headers: &'a HeaderMap, caps: CaptureState<'a>) -> Ctx<'a> {
        Ctx {
            host: "bj.example.com",
            uri: b"/user/a b",
            args: "x=1&Y=2",
            request_uri: "/user/a%20b?x=1&Y=2",
            scheme: "https",
            lane: "t-42",
            headers,
            caps,
            ext: None,
        }
    }

    #[test]
    fn every_builtin_variable_renders() {
        let mut h = HeaderMap::new();
        h.append("x-trace-id", "abc".parse().unwrap());
        h.append("x-multi", "1".parse().unwrap());
        h.append("x-multi", "2".parse().unwrap());
        h.append("cookie", "a=1; Session = s1 ;b=2".parse().unwrap());
        let t = Template::parse(
            "$host|$uri|$args|$is_args|$request_uri|$scheme|$lane|$http_x_trace_id|$HTTP_X_MULTI|\
             $cookie_session|$cookie_missing|$arg_y|${host}x|$document_uri|$query_string",
            &scope(&[], 0),
        )
        .unwrap();
        let c = ctx(&h, CaptureState::default());
        assert_eq!(
            t.render(&c),
            "bj.example.com|/user/a b|x=1&Y=2|?|/user/a%20b?x=1&Y=2|https|t-42|abc|1, 2|s1 ||2|bj.example.comx|/user/a b|x=1&Y=2"
        );
    }

    #[test]
    fn captures_numbered_and_named() {
        let host_rx = Rx::new(r"^(?<city>[a-z]+)\.example\.com$", false).unwrap();
        let loc_rx = Rx::new(r"^/user/(?<name>.*)$", false).unwrap();
        let hc = host_rx.captures(b"bj.example.com").unwrap();
        let lc = loc_rx.captures(b"/user/a b").unwrap();
        let h = HeaderMap::new();
        let t = Template::parse("$1-$city-${name}-$12", &scope(&["city", "name"], 1)).unwrap();
        assert!(t.uses_captures());
        let caps = CaptureState {
            numbered: Some(&lc),
            named: [None, Some(&lc), Some(&hc)],
        };
        assert_eq!(t.render(&ctx(&h, caps)), "a b-bj-a b-a b2");
        // numbered captures cleared (failed rewrite): names survive
        let caps = CaptureState {
            numbered: None,
            named: [None, Some(&lc), Some(&hc)],
        };
        assert_eq!(t.render(&ctx(&h, caps)), "-bj-a b-2");
    }

    #[test]
    fn literal_template_is_precomputed() {
        let t = Template::parse("laneway", &scope(&[], 0)).unwrap();
        assert_eq!(t.literal.as_deref(), Some("laneway"));
        assert!(!t.uses_captures());
    }

    #[test]
    fn unknown_and_invalid_variables_are_errors() {
        let e = Template::parse("/a/$nope", &scope(&[], 0)).unwrap_err();
        assert_eq!(e.offset, 3);
        assert!(
            e.message.contains("unknown variable $nope"),
            "{}",
            e.message
        );
        assert!(Template::parse("a$", &scope(&[], 0)).is_err());
        assert!(Template::parse("a$-", &scope(&[], 0)).is_err());
        assert!(Template::parse("${host", &scope(&[], 0))
            .unwrap_err()
            .message
            .contains("closing bracket"));
        assert!(Template::parse("$2", &scope(&[], 1))
            .unwrap_err()
            .message
            .contains("no capture group 2 in the location regex (capture groups: 1)"));
        assert!(Template::parse("$city", &scope(&["name"], 0)).is_err());
        assert!(Template::parse("$0", &scope(&[], 9)).is_err());
    }

    #[test]
    fn header_rendering_escapes_controls() {
        let h = HeaderMap::new();
        let c = Ctx {
            uri: b"/a\r\nx",
            ..ctx(&h, CaptureState::default())
        };
        let t = Template::parse("https://$host$uri", &scope(&[], 0)).unwrap();
        assert_eq!(t.render_header(&c), "https://bj.example.com/a%0D%0Ax");
    }

    #[test]
    fn rewrite_target_splits_args_at_first_literal_question_mark() {
        let s = scope(&[], 1);
        let r = RewriteTarget::parse("/u/$1?a=$1&b=?", &s).unwrap();
        assert!(!r.keep_args);
        assert_eq!(r.path.source(), "/u/$1");
        assert_eq!(r.args.as_ref().unwrap().source(), "a=$1&b=");
        let r = RewriteTarget::parse("/u/$1", &s).unwrap();
        assert!(r.keep_args && r.args.is_none());
        let r = RewriteTarget::parse("/u?", &s).unwrap();
        assert!(!r.keep_args && r.args.is_none());
        let r = RewriteTarget::parse("/u?$args", &s).unwrap();
        assert!(r.keep_args && r.args.is_some());
    }

    #[test]
    fn arg_and_cookie_lookups_follow_nginx() {
        assert_eq!(arg(b"ab=1&a=2&A=3", b"a"), Some(&b"2"[..]));
        assert_eq!(arg(b"xa=1", b"a"), None);
        let mut h = HeaderMap::new();
        h.append("cookie", "ab=1".parse().unwrap());
        h.append("cookie", "A=2; a=3".parse().unwrap());
        assert_eq!(cookie(&h, b"a"), Some(&b"2"[..]));
    }
}
