//! Compiled regexes for route rules and "first match in file order" over
//! many of them. Compiled on the control plane; matched on the request path.
//!
//! Regexes match bytes (a decoded path may hold any byte) with Unicode mode
//! off, like PCRE without its UTF flag in nginx: `.` is any byte, `\w` and
//! case folding are ASCII. Literal UTF-8 text in a pattern still matches.

use std::cell::RefCell;

use regex::bytes::{CaptureLocations, Regex, RegexBuilder, RegexSet, RegexSetBuilder};

/// Below this many regexes, trying them one by one beats a [`RegexSet`].
pub(crate) const SET_THRESHOLD: usize = 4;
/// The set is an optimisation: when it would be this large we try regexes
/// one by one instead of failing the rules file.
const SET_SIZE_LIMIT: usize = 64 << 20;

/// One compiled regex with what templates need to know about its groups.
/// A clone shares the compiled program (it gets its own match cache).
#[derive(Debug, Clone)]
pub(crate) struct Rx {
    pub re: Regex,
    /// The pattern as the set sees it (with a `(?i)` prefix when caseless).
    set_pattern: String,
    /// Named groups, lowercased (nginx variable names are case-insensitive).
    names: Box<[(Box<str>, usize)]>,
    /// Number of capture groups, not counting the whole match.
    pub groups: usize,
}

impl Rx {
    /// Compiles `pattern`; the error is the regex engine's own message.
    pub fn new(pattern: &str, caseless: bool) -> Result<Rx, String> {
        let re = RegexBuilder::new(pattern)
            .unicode(false)
            .case_insensitive(caseless)
            .build()
            .map_err(|e| e.to_string())?;
        let names = re
            .capture_names()
            .enumerate()
            .filter_map(|(i, n)| n.map(|n| (n.to_ascii_lowercase().into_boxed_str(), i)))
            .collect();
        let set_pattern = set_pattern(pattern, caseless);
        Ok(Rx {
            groups: re.captures_len() - 1,
            re,
            set_pattern,
            names,
        })
    }

    /// The group index of a named capture (name already lowercased).
    pub fn group_of(&self, name: &str) -> Option<usize> {
        self.names
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|&(_, i)| i)
    }

    /// Lowercased names of the named groups.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(|(n, _)| &**n)
    }

    /// Runs the regex for its capture groups. Allocates the group table:
    /// call it only when a template needs a capture.
    pub fn captures<'h>(&self, hay: &'h [u8]) -> Option<Captured<'_, 'h>> {
        let mut locs = self.re.capture_locations();
        self.re.captures_read(&mut locs, hay)?;
        Some(Captured {
            rx: self,
            hay,
            locs,
        })
    }
}

/// `pattern` as a [`RegexSet`] member: the set has no per-pattern flags.
pub(crate) fn set_pattern(pattern: &str, caseless: bool) -> String {
    if caseless {
        format!("(?i){pattern}")
    } else {
        pattern.to_string()
    }
}

/// The set [`FirstMatch`] uses for these patterns (`set_pattern` form), or
/// `None` when there are too few of them or the set would be too large.
pub(crate) fn build_set<S: AsRef<str>>(patterns: &[S]) -> Option<RegexSet> {
    if patterns.len() < SET_THRESHOLD {
        return None;
    }
    RegexSetBuilder::new(patterns.iter().map(AsRef::as_ref))
        .unicode(false)
        .size_limit(SET_SIZE_LIMIT)
        .dfa_size_limit(SET_SIZE_LIMIT)
        .build()
        .ok()
}

/// The groups of one successful match.
#[derive(Debug)]
pub(crate) struct Captured<'r, 'h> {
    pub rx: &'r Rx,
    hay: &'h [u8],
    locs: CaptureLocations,
}

impl Captured<'_, '_> {
    /// Group `n`; empty when it did not take part in the match (nginx).
    pub fn group(&self, n: usize) -> &[u8] {
        match self.locs.get(n) {
            Some((s, e)) => &self.hay[s..e],
            None => b"",
        }
    }

    /// A named group, if this regex has one of that (lowercased) name.
    pub fn named(&self, name: &str) -> Option<&[u8]> {
        self.rx.group_of(name).map(|i| self.group(i))
    }
}

/// Regexes tried in order; the first that matches wins.
#[derive(Debug, Default)]
pub(crate) struct FirstMatch {
    rxs: Vec<Rx>,
    set: Option<RegexSet>,
}

thread_local! {
    /// Scratch for [`RegexSet::matches_read_at`] on sets too big for the stack.
    static SET_SCRATCH: RefCell<Vec<bool>> = const { RefCell::new(Vec::new()) };
}

impl FirstMatch {
    #[cfg(test)]
    pub fn new(rxs: Vec<Rx>) -> FirstMatch {
        Self::with_set(rxs, None)
    }

    /// Like [`FirstMatch::new`], taking the set from `built` when it was
    /// built ahead (see `compile::precompile`) for exactly these regexes.
    pub fn with_set(rxs: Vec<Rx>, built: Option<RegexSet>) -> FirstMatch {
        let patterns: Vec<&str> = rxs.iter().map(|r| r.set_pattern.as_str()).collect();
        let set = match built {
            Some(set)
                if set
                    .patterns()
                    .iter()
                    .map(String::as_str)
                    .eq(patterns.iter().copied()) =>
            {
                Some(set)
            }
            _ => build_set(&patterns),
        };
        FirstMatch { rxs, set }
    }

    pub fn get(&self, i: usize) -> &Rx {
        &self.rxs[i]
    }

    pub fn is_empty(&self) -> bool {
        self.rxs.is_empty()
    }

    /// Index of the first regex (in file order) that matches `hay`.
    pub fn first(&self, hay: &[u8]) -> Option<usize> {
        let Some(set) = &self.set else {
            return self.rxs.iter().position(|r| r.re.is_match(hay));
        };
        if !set.is_match(hay) {
            return None;
        }
        let n = set.len();
        if n <= 256 {
            let mut buf = [false; 256];
            set.matches_read_at(&mut buf[..n], hay, 0);
            return buf[..n].iter().position(|&m| m);
        }
        SET_SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut buf) => {
                buf.clear();
                buf.resize(n, false);
                set.matches_read_at(&mut buf, hay, 0);
                buf.iter().position(|&m| m)
            }
            // unreachable (no re-entry), but never panic on the request path
            Err(_) => self.rxs.iter().position(|r| r.re.is_match(hay)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(pats: &[(&str, bool)]) -> FirstMatch {
        FirstMatch::new(
            pats.iter()
                .map(|(p, ci)| Rx::new(p, *ci).unwrap())
                .collect(),
        )
    }

    #[test]
    fn first_in_order_not_leftmost_small_and_large() {
        for extra in [0usize, 10, 300] {
            let mut pats: Vec<(String, bool)> = vec![("b$".into(), false), ("^/a".into(), false)];
            for i in 0..extra {
                pats.push((format!("^/never{i}$"), false));
            }
            pats.push(("^/".into(), false));
            let fm = FirstMatch::new(
                pats.iter()
                    .map(|(p, ci)| Rx::new(p, *ci).unwrap())
                    .collect(),
            );
            assert_eq!(fm.first(b"/ab"), Some(0), "extra={extra}");
            assert_eq!(fm.first(b"/ax"), Some(1), "extra={extra}");
            assert_eq!(fm.first(b"/x"), Some(pats.len() - 1), "extra={extra}");
            assert_eq!(fm.first(b"x"), None, "extra={extra}");
        }
    }

    #[test]
    fn caseless_flag_applies_per_regex_in_a_set() {
        let fm = list(&[
            ("^/A$", false),
            ("^/B$", true),
            ("^/c$", false),
            ("^/d$", false),
        ]);
        assert!(fm.set.is_some());
        assert_eq!(fm.first(b"/a"), None);
        assert_eq!(fm.first(b"/b"), Some(1));
        assert_eq!(fm.first(b"/C"), None);
    }

    #[test]
    fn a_set_built_ahead_is_used_only_for_the_same_patterns() {
        let rxs = || {
            ["^/a", "^/b", "^/c", "^/d"]
                .iter()
                .map(|p| Rx::new(p, false).unwrap())
                .collect::<Vec<_>>()
        };
        let same = build_set(&["^/a", "^/b", "^/c", "^/d"]);
        let fm = FirstMatch::with_set(rxs(), same);
        assert_eq!(fm.first(b"/c"), Some(2));
        // a set for other patterns is not trusted: it is built again
        let other = build_set(&["^/x", "^/b", "^/c", "^/d"]);
        let fm = FirstMatch::with_set(rxs(), other);
        assert_eq!(fm.first(b"/a"), Some(0));
        assert_eq!(fm.first(b"/x"), None);
        assert!(build_set(&["^/a"]).is_none(), "below the threshold");
    }

    #[test]
    fn dot_matches_any_byte() {
        let rx = Rx::new("^/a.b$", false).unwrap();
        assert!(rx.re.is_match(b"/a\xffb"));
    }

    #[test]
    fn named_groups_are_found_case_insensitively() {
        let rx = Rx::new(r"^(?<City>[a-z]+)\.(x)?", false).unwrap();
        assert_eq!(rx.groups, 2);
        let c = rx.captures(b"bj.").unwrap();
        assert_eq!(c.named("city"), Some(&b"bj"[..]));
        assert_eq!(c.group(2), b"");
        assert_eq!(c.group(7), b"");
    }
}
