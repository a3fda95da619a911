//! Request-target handling for route matching (request path): splitting the
//! raw target into path and args, nginx's `$uri` normalisation, and nginx's
//! URI escaping for rewritten upstream targets and redirects.
//!
//! Normalisation follows `ngx_http_parse_complex_uri` with `merge_slashes on`:
//! `%XX` is decoded (an encoded `/` or `.` then counts as a slash or dot, so
//! `%2F` separates segments and `%2e%2e` climbs), except that a decoded `%`,
//! `#` or `?` is kept as a literal character; a decoded NUL, a malformed
//! escape, or `..` above the root is a bad request; `//` is merged; `.` and
//! `..` segments are resolved; a raw `#` ends the path.

use std::borrow::Cow;

/// The parts of a request target that matching and templates need.
#[derive(Debug)]
pub(crate) struct Target<'a> {
    /// The path and query as received (`$request_uri`).
    pub request_uri: &'a str,
    /// The raw query string, without `?` and without a fragment (`$args`).
    pub args: &'a str,
    /// The normalised, decoded path (`$uri`); borrowed when nothing changed.
    pub uri: Cow<'a, [u8]>,
    /// The raw path contained a `%` escape (nginx `quoted_uri`).
    pub quoted: bool,
    /// The decoded path contains a `+` (nginx `plus_in_uri`).
    pub plus: bool,
}

/// Reasons a target is refused; each is the body of a 400 answer.
pub(crate) const BAD_TARGET: &str = "invalid request target";
pub(crate) const BAD_ESCAPE: &str = "invalid percent-encoding in request path";
pub(crate) const ABOVE_ROOT: &str = "request path goes above the root";
pub(crate) const NUL_IN_PATH: &str = "NUL byte in request path";

/// Splits and normalises a raw request target: origin form (`/p?q`) or
/// absolute form (`http://host/p?q`).
pub(crate) fn parse_target(target: &str) -> Result<Target<'_>, &'static str> {
    let request_uri = origin_part(target)?;
    let (raw_path, args) = match request_uri.find('?') {
        Some(q) => {
            let args = &request_uri[q + 1..];
            let args = args.split_once('#').map_or(args, |(a, _)| a);
            (&request_uri[..q], args)
        }
        None => (request_uri, ""),
    };
    let raw = raw_path.as_bytes();
    let quoted = raw.contains(&b'%');
    let uri = if raw.is_empty() {
        // absolute form without a path: nginx supplies "/"
        Cow::Borrowed(&b"/"[..])
    } else if needs_normalising(raw) {
        Cow::Owned(normalise(raw)?)
    } else {
        Cow::Borrowed(raw)
    };
    let plus = uri.contains(&b'+');
    Ok(Target {
        request_uri,
        args,
        uri,
        quoted,
        plus,
    })
}

/// The path-and-query part of a target (from the first `/` after the
/// authority of an absolute-form target).
fn origin_part(target: &str) -> Result<&str, &'static str> {
    if target.starts_with('/') {
        return Ok(target);
    }
    let b = target.as_bytes();
    let scheme_len = if b.len() >= 7 && b[..7].eq_ignore_ascii_case(b"http://") {
        7
    } else if b.len() >= 8 && b[..8].eq_ignore_ascii_case(b"https://") {
        8
    } else {
        return Err(BAD_TARGET);
    };
    let rest = &target[scheme_len..];
    match rest.find(['/', '?', '#']) {
        Some(i) if rest.as_bytes()[i] == b'/' => Ok(&rest[i..]),
        // "http://host?x" has an empty path: keep the query
        Some(i) => Ok(&rest[i..]),
        None => Ok(""),
    }
}

/// True when the raw path holds anything nginx's complex-URI parser would
/// change: an escape, a dot segment, a double slash, a fragment, a NUL, or a
/// path not starting with `/` (only possible for "?q" with an empty path).
fn needs_normalising(raw: &[u8]) -> bool {
    if raw.first() != Some(&b'/') {
        return true;
    }
    let mut prev = 0u8;
    for &c in raw {
        match c {
            b'%' | b'#' | 0 => return true,
            b'/' | b'.' if prev == b'/' => return true,
            _ => {}
        }
        prev = c;
    }
    false
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Usual,
    Slash,
    Dot,
    DotDot,
}

/// nginx `$uri` normalisation of a raw path (no query). See the module doc.
pub(crate) fn normalise(raw: &[u8]) -> Result<Vec<u8>, &'static str> {
    let mut out: Vec<u8> = Vec::with_capacity(raw.len() + 1);
    let mut state = State::Usual;
    let mut i = 0;
    if raw.first() != Some(&b'/') {
        // only reachable for an absolute-form target with an empty path
        out.push(b'/');
        state = State::Slash;
    }
    while i < raw.len() {
        let mut c = raw[i];
        i += 1;
        match c {
            0 => return Err(NUL_IN_PATH),
            b'#' => break,
            b'%' => {
                let (Some(&h), Some(&l)) = (raw.get(i), raw.get(i + 1)) else {
                    return Err(BAD_ESCAPE);
                };
                let (Some(h), Some(l)) = (hex_value(h), hex_value(l)) else {
                    return Err(BAD_ESCAPE);
                };
                i += 2;
                c = (h << 4) | l;
                match c {
                    0 => return Err(NUL_IN_PATH),
                    // kept literally, never re-interpreted
                    b'%' | b'#' | b'?' => {
                        out.push(c);
                        state = State::Usual;
                        continue;
                    }
                    _ => {}
                }
            }
            _ => {}
        }
        state = step(&mut out, state, c)?;
    }
    match state {
        State::Dot => {
            out.pop();
        }
        State::DotDot => climb(&mut out)?,
        State::Usual | State::Slash => {}
    }
    Ok(out)
}

/// Feeds one (possibly decoded) character to the dot-segment state machine.
fn step(out: &mut Vec<u8>, state: State, c: u8) -> Result<State, &'static str> {
    Ok(match (state, c) {
        (State::Slash, b'/') => State::Slash, // merge_slashes
        (State::Slash, b'.') => {
            out.push(c);
            State::Dot
        }
        (State::Dot, b'/') => {
            out.pop(); // "/./" -> "/"
            State::Slash
        }
        (State::Dot, b'.') => {
            out.push(c);
            State::DotDot
        }
        (State::DotDot, b'/') => {
            climb(out)?;
            State::Slash
        }
        (_, b'/') => {
            out.push(c);
            State::Slash
        }
        _ => {
            out.push(c);
            State::Usual
        }
    })
}

/// `out` ends with "/..": drop it and the segment before it, keeping the
/// slash that ends the parent. Above the root is an error.
fn climb(out: &mut Vec<u8>) -> Result<(), &'static str> {
    if out.len() < 4 {
        return Err(ABOVE_ROOT);
    }
    let keep = out[..out.len() - 3]
        .iter()
        .rposition(|&b| b == b'/')
        .ok_or(ABOVE_ROOT)?;
    out.truncate(keep + 1);
    Ok(())
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// nginx escape tables (`ngx_escape_uri`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Escape {
    /// `NGX_ESCAPE_URI`: controls, space, `"`, `#`, `%`, `<`, `>`, `?`,
    /// `\`, `^`, `` ` ``, `{`, `|`, `}`, DEL and non-ASCII.
    Uri,
    /// `NGX_ESCAPE_ARGS`: as `Uri` plus `&`, `+` and `;`.
    Args,
}

impl Escape {
    fn needs(self, c: u8) -> bool {
        match c {
            0..=0x20 | 0x7f..=0xff => true,
            b'"' | b'#' | b'%' | b'<' | b'>' | b'?' | b'\\' | b'^' | b'`' | b'{' | b'|' | b'}' => {
                true
            }
            b'&' | b'+' | b';' => self == Escape::Args,
            _ => false,
        }
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Appends `src` to `out`, `%XX`-escaping what `table` says.
pub(crate) fn escape_into(out: &mut Vec<u8>, src: &[u8], table: Escape) {
    for &c in src {
        if table.needs(c) {
            out.extend_from_slice(&[b'%', HEX[usize::from(c >> 4)], HEX[usize::from(c & 0xf)]]);
        } else {
            out.push(c);
        }
    }
}

/// `%XX`-escapes, in place, the bytes that cannot appear in an HTTP header
/// value or a request target (controls and DEL), so that a template fed
/// with a decoded `%0d%0a` cannot inject a header line. nginx would copy
/// them raw; this is the one deliberate difference.
pub(crate) fn escape_controls(buf: &mut Vec<u8>) {
    if !buf.iter().any(|&c| c < 0x20 || c == 0x7f) {
        return;
    }
    let src = std::mem::take(buf);
    buf.reserve(src.len() + 8);
    for c in src {
        if c < 0x20 || c == 0x7f {
            buf.extend_from_slice(&[b'%', HEX[usize::from(c >> 4)], HEX[usize::from(c & 0xf)]]);
        } else {
            buf.push(c);
        }
    }
}

/// Bytes to `String`: as is when valid UTF-8 (the usual case), else with
/// replacement characters (a decoded path may hold any byte).
pub(crate) fn into_string(bytes: Vec<u8>) -> String {
    match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(target: &str) -> Result<String, &'static str> {
        parse_target(target).map(|t| String::from_utf8(t.uri.into_owned()).unwrap())
    }

    #[test]
    fn plain_path_is_borrowed() {
        let t = parse_target("/user/a?x=1").unwrap();
        assert!(matches!(t.uri, Cow::Borrowed(_)));
        assert_eq!(&*t.uri, b"/user/a");
        assert_eq!(t.args, "x=1");
        assert_eq!(t.request_uri, "/user/a?x=1");
        assert!(!t.quoted);
    }

    #[test]
    fn percent_escapes_are_decoded() {
        assert_eq!(uri("/a%20b").unwrap(), "/a b");
        assert_eq!(uri("/%E4%B8%AD").unwrap(), "/中");
        assert!(parse_target("/a%20b").unwrap().quoted);
    }

    #[test]
    fn encoded_slash_is_decoded_and_merged_like_a_slash() {
        // nginx decodes %2F for matching; it then merges with a real slash
        assert_eq!(uri("/a%2Fb").unwrap(), "/a/b");
        assert_eq!(uri("/a/%2Fb").unwrap(), "/a/b");
    }

    #[test]
    fn encoded_dots_are_resolved() {
        assert_eq!(uri("/a/%2e%2e/b").unwrap(), "/b");
        assert_eq!(uri("/a/%2E/b").unwrap(), "/a/b");
    }

    #[test]
    fn encoded_percent_hash_and_question_mark_stay_literal() {
        assert_eq!(uri("/a%25b").unwrap(), "/a%b");
        assert_eq!(uri("/a%2541").unwrap(), "/a%41");
        assert_eq!(uri("/a%23b").unwrap(), "/a#b");
        let t = parse_target("/a%3Fb?c=1").unwrap();
        assert_eq!(&*t.uri, b"/a?b");
        assert_eq!(t.args, "c=1");
    }

    #[test]
    fn slashes_merge_and_dot_segments_resolve() {
        assert_eq!(uri("//a///b").unwrap(), "/a/b");
        assert_eq!(uri("/a/./b/.").unwrap(), "/a/b/");
        assert_eq!(uri("/a/b/../c").unwrap(), "/a/c");
        assert_eq!(uri("/a/b/..").unwrap(), "/a/");
        assert_eq!(uri("/a/..").unwrap(), "/");
        assert_eq!(uri("/a/...").unwrap(), "/a/...");
        assert_eq!(uri("/a/.b").unwrap(), "/a/.b");
        assert_eq!(uri("/a/..b/").unwrap(), "/a/..b/");
    }

    #[test]
    fn dot_dot_above_root_is_a_bad_request() {
        assert_eq!(uri("/.."), Err(ABOVE_ROOT));
        assert_eq!(uri("/../a"), Err(ABOVE_ROOT));
        assert_eq!(uri("/a/../../b"), Err(ABOVE_ROOT));
        assert_eq!(uri("/%2e%2e/etc/passwd"), Err(ABOVE_ROOT));
        assert_eq!(uri("/a/..?x"), Ok("/".into()));
    }

    #[test]
    fn malformed_escapes_and_nul_are_bad_requests() {
        assert_eq!(uri("/a%zz"), Err(BAD_ESCAPE));
        assert_eq!(uri("/a%2"), Err(BAD_ESCAPE));
        assert_eq!(uri("/a%00b"), Err(NUL_IN_PATH));
        assert_eq!(uri("*"), Err(BAD_TARGET));
    }

    #[test]
    fn fragment_is_dropped() {
        let t = parse_target("/a#frag").unwrap();
        assert_eq!(&*t.uri, b"/a");
        let t = parse_target("/a?x=1#frag").unwrap();
        assert_eq!(t.args, "x=1");
    }

    #[test]
    fn absolute_form_uses_the_path() {
        let t = parse_target("http://Example.com:8080/a/../b?q").unwrap();
        assert_eq!(&*t.uri, b"/b");
        assert_eq!(t.args, "q");
        assert_eq!(t.request_uri, "/a/../b?q");
        assert_eq!(&*parse_target("https://h").unwrap().uri, b"/");
        assert_eq!(parse_target("http://h?x=1").unwrap().args, "x=1");
    }

    #[test]
    fn plus_is_tracked_raw_or_encoded() {
        assert!(parse_target("/a+b").unwrap().plus);
        assert!(parse_target("/a%2Bb").unwrap().plus);
        assert!(!parse_target("/ab?x=+").unwrap().plus);
    }

    #[test]
    fn escape_tables_match_nginx() {
        let mut out = Vec::new();
        escape_into(&mut out, "/a b?c#%\"中&+;".as_bytes(), Escape::Uri);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "/a%20b%3Fc%23%25%22%E4%B8%AD&+;"
        );
        let mut out = Vec::new();
        escape_into(&mut out, b"a&b+c;d=e/f", Escape::Args);
        assert_eq!(String::from_utf8(out).unwrap(), "a%26b%2Bc%3Bd=e/f");
    }

    #[test]
    fn normalised_paths_never_keep_dot_segments_or_double_slashes() {
        // deterministic pseudo-random targets built from the tricky bytes
        let alphabet: &[&str] = &[
            "/", ".", "..", "%2e", "%2F", "%25", "%", "a", "?", "#", "%00", "+",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            let mut t = String::from("/");
            for _ in 0..(seed % 12) {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                t.push_str(alphabet[(seed >> 33) as usize % alphabet.len()]);
            }
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let Ok(target) = parse_target(&t) else {
                continue;
            };
            let u = &*target.uri;
            assert_eq!(u.first(), Some(&b'/'), "{t}");
            let has = |pat: &[u8]| u.windows(pat.len()).any(|w| w == pat);
            assert!(!has(b"//"), "{t} -> {:?}", String::from_utf8_lossy(u));
            assert!(!has(b"/./") && !u.ends_with(b"/."), "{t}");
            assert!(!has(b"/../") && !u.ends_with(b"/.."), "{t}");
        }
    }

    #[test]
    fn controls_are_escaped_for_headers() {
        let mut b = b"/a\r\nSet-Cookie: x".to_vec();
        escape_controls(&mut b);
        assert_eq!(b, b"/a%0D%0ASet-Cookie: x");
    }
}
