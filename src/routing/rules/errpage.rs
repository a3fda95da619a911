//! nginx `error_page`: the compiled pages of a server or location (built on
//! the control plane) and the lookup of the page for a status (request
//! path, pure). The engine (`exec.rs`) runs what a page asks: an internal
//! redirect to a URI or a named location, or a redirect.
//!
//! As `ngx_http_core_error_page` reads the directive: `code … [=[response]]
//! target`, codes 300–599 (not 499), the page of the first matching code in
//! the order written. `=response` answers with that status, `=` alone with
//! the status of whatever the target answers, no `=` with the original
//! status (494–497 become 400, as nginx does).

use super::template::Template;

/// The first and last status `error_page` accepts.
const FIRST: u16 = 300;
const LAST: u16 = 599;

/// A set of statuses 300–599, for the proxy's check of an upstream status
/// (`proxy_intercept_errors`): a copyable bitset, no allocation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorCodes([u64; 5]);

impl ErrorCodes {
    fn insert(&mut self, status: u16) {
        if (FIRST..=LAST).contains(&status) {
            let i = usize::from(status - FIRST);
            self.0[i / 64] |= 1 << (i % 64);
        }
    }

    /// The status is one of the set.
    #[inline]
    pub fn contains(&self, status: u16) -> bool {
        if !(FIRST..=LAST).contains(&status) {
            return false;
        }
        let i = usize::from(status - FIRST);
        self.0[i / 64] & (1 << (i % 64)) != 0
    }

    /// The statuses in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        (FIRST..=LAST).filter(|s| self.contains(*s))
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }
}

/// One code of one `error_page` directive.
#[derive(Debug)]
pub(crate) struct ErrorPage {
    pub status: u16,
    /// `=code`: `Some(code)`; `=` alone: `Some(0)` (the target's status);
    /// no `=`: `None` (the original status).
    pub overwrite: Option<u16>,
    /// The target: `/uri[?args]`, `@named` or a URL (a template).
    pub target: Template,
    /// `Some(name)` for a literal `@name` target.
    pub named: Option<Box<str>>,
}

/// The error pages in force at one level (server or location).
#[derive(Debug)]
pub struct ErrorPages {
    pages: Box<[ErrorPage]>,
    codes: ErrorCodes,
}

impl ErrorPages {
    pub(crate) fn new(pages: Vec<ErrorPage>) -> ErrorPages {
        let mut codes = ErrorCodes::default();
        for p in &pages {
            codes.insert(p.status);
        }
        ErrorPages {
            pages: pages.into_boxed_slice(),
            codes,
        }
    }

    /// The page for `status`: the first one written for it.
    pub(crate) fn find(&self, status: u16) -> Option<&ErrorPage> {
        if !self.codes.contains(status) {
            return None;
        }
        self.pages.iter().find(|p| p.status == status)
    }

    /// Every status a page is written for.
    pub fn codes(&self) -> &ErrorCodes {
        &self.codes
    }
}

/// One `error_page` directive's arguments, checked as nginx checks them:
/// the codes, the `=` overwrite and the target text.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct PageSpec {
    pub codes: Vec<(u16, Option<u16>)>,
    pub target: String,
}

/// Reads `error_page` arguments; the error names the bad value.
pub(crate) fn parse_args(args: &[String]) -> Result<PageSpec, String> {
    if args.len() < 2 {
        return Err(
            "\"error_page\" takes one or more codes and a target (URI, @name or URL)".into(),
        );
    }
    let target = args[args.len() - 1].clone();
    if target.is_empty() {
        return Err("error_page target is empty".into());
    }
    let mut codes_end = args.len() - 1;
    let mut overwrite: Option<u16> = None;
    let before = &args[args.len() - 2];
    if let Some(code) = before.strip_prefix('=') {
        if args.len() == 2 {
            return Err(format!(
                "invalid value {before:?}: error_page needs a code before \"=\""
            ));
        }
        overwrite = Some(if code.is_empty() {
            0
        } else {
            match code.parse::<u16>() {
                Ok(c) if (100..=599).contains(&c) => c,
                _ => {
                    return Err(format!(
                        "invalid value {before:?}: \"=\" takes an HTTP status (100–599)"
                    ))
                }
            }
        });
        codes_end -= 1;
    }
    let mut codes = Vec::new();
    for a in &args[..codes_end] {
        let status = match a.parse::<u16>() {
            Ok(s) if s != 499 => s,
            _ => return Err(format!("invalid value {a:?}: not an error_page code")),
        };
        if !(FIRST..=LAST).contains(&status) {
            return Err(format!("value {a:?} must be between 300 and 599"));
        }
        // nginx answers these with 400 unless told otherwise
        let ow = match (overwrite, status) {
            (None, 494..=497) => Some(400),
            (o, _) => o,
        };
        codes.push((status, ow));
    }
    if target.starts_with('@') && target.contains('$') {
        return Err(format!(
            "error_page target {target:?}: a named location must be written literally"
        ));
    }
    Ok(PageSpec { codes, target })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn codes_overwrite_and_target_are_read_as_nginx_does() {
        assert_eq!(
            parse_args(&args("500 502 /50x.html")).unwrap(),
            PageSpec {
                codes: vec![(500, None), (502, None)],
                target: "/50x.html".into()
            }
        );
        assert_eq!(
            parse_args(&args("404 = @fallback")).unwrap().codes,
            vec![(404, Some(0))]
        );
        assert_eq!(
            parse_args(&args("403 =200 /public")).unwrap().codes,
            vec![(403, Some(200))]
        );
        assert_eq!(
            parse_args(&args("497 https://x/")).unwrap().codes,
            vec![(497, Some(400))]
        );
    }

    #[test]
    fn bad_values_are_named() {
        for (a, want) in [
            ("404", "takes one or more codes"),
            ("=200 /x", "needs a code before"),
            ("404 =abc /x", "\"=abc\""),
            ("200 /x", "between 300 and 599"),
            ("499 /x", "\"499\""),
            ("40x /x", "\"40x\""),
            ("404 @$name", "literally"),
        ] {
            let e = parse_args(&args(a)).unwrap_err();
            assert!(e.contains(want), "{a}: {e}");
        }
    }

    #[test]
    fn code_set_holds_exactly_the_codes() {
        let mut c = ErrorCodes::default();
        for s in [300, 404, 502, 599] {
            c.insert(s);
        }
        assert!(c.contains(404) && c.contains(300) && c.contains(599));
        assert!(!c.contains(403) && !c.contains(200) && !c.contains(600));
        assert_eq!(c.iter().collect::<Vec<_>>(), [300, 404, 502, 599]);
    }
}
