//! The nginx configuration language: a lexer and a block parser that follows
//! `include` (globs, relative to the directory of the main file, as nginx's
//! configuration prefix), keeping file and line for every directive. Control
//! plane only.
//!
//! Hand-written: no maintained crate parses nginx's configuration syntax with
//! its quoting and escape rules, `${var}` inside words, includes and line
//! numbers (the crates that exist are abandoned or parse a subset into a
//! fixed schema). The grammar is small: words, `;`, `{`, `}`, comments.
//!
//! Lexing follows `ngx_conf_read_token`: words are separated by whitespace,
//! `;`, `{` and `}`; `"…"` and `'…'` quote; a backslash takes the next byte
//! literally; in the word's value `\"`, `\'` and `\\` lose their backslash
//! and `\t`, `\r`, `\n` become the control byte, other backslashes stay (so
//! regexes keep `\.` and `\d`); `#` at the start of a word comments to the
//! end of the line. A comment of the form `# laneway: key=value` is kept as a
//! note on the directive it precedes or whose block holds it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::error::ConfigError;

/// One directive: `name arg…;` or `name arg… { … }`.
#[derive(Debug, Clone)]
pub struct Directive {
    pub name: String,
    pub args: Vec<String>,
    pub file: Arc<Path>,
    pub line: usize,
    /// The block, for `name … { … }`.
    pub block: Option<Vec<Directive>>,
    /// `# laneway: …` comments on this directive (text after `laneway:`).
    pub notes: Vec<String>,
}

impl Directive {
    /// `file:line` for reports.
    pub fn at(&self) -> String {
        format!("{}:{}", self.file.display(), self.line)
    }

    /// The notes on this directive and on the directives of its block
    /// (a note anywhere on a block describes the block).
    pub fn all_notes(&self) -> Vec<String> {
        let mut out = self.notes.clone();
        for d in self.block.iter().flatten() {
            out.extend(d.notes.iter().cloned());
        }
        out
    }

    pub fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::new(&self.file, self.line, 0, message)
    }
}

/// A parsed configuration: the top-level directives (includes expanded) and
/// every file that was read, main file first.
#[derive(Debug, Clone)]
pub struct NginxConfig {
    pub main: PathBuf,
    pub directives: Vec<Directive>,
    pub files: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Semi,
    Open,
    Close,
    Note(String),
}

/// Lexes `src`; tokens carry their 1-based line.
fn lex(src: &[u8], file: &Path) -> Result<Vec<(Tok, usize)>, ConfigError> {
    let mut out = Vec::new();
    let mut i = 0;
    let mut line = 1;
    let err = |line: usize, m: String| ConfigError::new(file, line, 0, m);
    while i < src.len() {
        let c = src[i];
        match c {
            b'\n' => {
                line += 1;
                i += 1;
            }
            b' ' | b'\t' | b'\r' => i += 1,
            b';' => {
                out.push((Tok::Semi, line));
                i += 1;
            }
            b'{' => {
                out.push((Tok::Open, line));
                i += 1;
            }
            b'}' => {
                out.push((Tok::Close, line));
                i += 1;
            }
            b'#' => {
                let start = i + 1;
                while i < src.len() && src[i] != b'\n' {
                    i += 1;
                }
                let text = String::from_utf8_lossy(&src[start..i]);
                if let Some(note) = text.trim().strip_prefix("laneway:") {
                    out.push((Tok::Note(note.trim().to_string()), line));
                }
            }
            b'"' | b'\'' => {
                let quote = c;
                let start_line = line;
                let mut raw = Vec::new();
                i += 1;
                loop {
                    let Some(&b) = src.get(i) else {
                        return Err(err(
                            start_line,
                            "unexpected end of file in a quoted string".to_string(),
                        ));
                    };
                    if b == b'\\' && i + 1 < src.len() {
                        raw.extend_from_slice(&src[i..i + 2]);
                        if src[i + 1] == b'\n' {
                            line += 1;
                        }
                        i += 2;
                        continue;
                    }
                    i += 1;
                    if b == quote {
                        break;
                    }
                    if b == b'\n' {
                        line += 1;
                    }
                    raw.push(b);
                }
                if let Some(&n) = src.get(i) {
                    // nginx also accepts ")" right after a quote (`if ($a = "x")`)
                    if !matches!(n, b' ' | b'\t' | b'\r' | b'\n' | b';' | b'{' | b'}' | b')') {
                        return Err(err(
                            line,
                            format!("unexpected {:?} after a quoted string", n as char),
                        ));
                    }
                }
                out.push((Tok::Word(unescape(&raw)), start_line));
            }
            _ => {
                let start_line = line;
                let mut raw = Vec::new();
                while i < src.len() {
                    let b = src[i];
                    if b == b'\\' && i + 1 < src.len() {
                        raw.extend_from_slice(&src[i..i + 2]);
                        i += 2;
                        continue;
                    }
                    if b == b'$' && src.get(i + 1) == Some(&b'{') {
                        // `${name}` inside a word: the brace is not a block
                        let end = src[i..].iter().position(|&x| x == b'}').map(|p| i + p);
                        let Some(end) = end else {
                            return Err(err(line, "unclosed \"${\" in a word".to_string()));
                        };
                        raw.extend_from_slice(&src[i..=end]);
                        i = end + 1;
                        continue;
                    }
                    if matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b';' | b'{' | b'}') {
                        break;
                    }
                    if (b == b'"' || b == b'\'') && !raw.is_empty() {
                        // nginx takes a quote inside a word literally
                    }
                    raw.push(b);
                    i += 1;
                }
                out.push((Tok::Word(unescape(&raw)), start_line));
            }
        }
    }
    Ok(out)
}

/// nginx's word unescaping (see the module doc).
fn unescape(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'\\' && i + 1 < raw.len() {
            match raw[i + 1] {
                b'"' | b'\'' | b'\\' => {
                    out.push(raw[i + 1]);
                    i += 2;
                    continue;
                }
                b't' => {
                    out.push(b'\t');
                    i += 2;
                    continue;
                }
                b'r' => {
                    out.push(b'\r');
                    i += 2;
                    continue;
                }
                b'n' => {
                    out.push(b'\n');
                    i += 2;
                    continue;
                }
                _ => {}
            }
        }
        out.push(raw[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Quotes a word so that [`lex`] gives it back unchanged.
pub fn quote_word(w: &str) -> String {
    let plain = !w.is_empty()
        && !w.bytes().any(|b| {
            matches!(
                b,
                b' ' | b'\t' | b'\r' | b'\n' | b';' | b'{' | b'}' | b'#' | b'"' | b'\'' | b'\\'
            )
        })
        && !w.contains("${");
    if plain {
        return w.to_string();
    }
    let mut out = String::with_capacity(w.len() + 2);
    out.push('\'');
    let b = w.as_bytes();
    for (i, ch) in w.char_indices() {
        match ch {
            '\'' => out.push_str("\\'"),
            '\\' if matches!(
                b.get(i + 1),
                Some(b'"' | b'\'' | b'\\' | b't' | b'r' | b'n')
            ) || i + 1 == b.len() =>
            {
                out.push_str("\\\\")
            }
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// Parses nginx text (no includes): used for the `script` directives of
/// routes.toml, which are written in nginx syntax.
pub fn parse_str(src: &str, file: &Path, first_line: usize) -> Result<Vec<Directive>, ConfigError> {
    let file: Arc<Path> = Arc::from(file);
    let toks = lex(src.as_bytes(), &file)?;
    let mut p = Parser {
        toks,
        pos: 0,
        file: file.clone(),
        line_offset: first_line.saturating_sub(1),
    };
    let mut ctx = IncludeCtx {
        prefix: PathBuf::new(),
        files: Vec::new(),
        allow_include: false,
        depth: 0,
    };
    p.block(&mut ctx, false)
}

/// Reads `main` and every file it includes.
pub fn parse_file(main: &Path) -> Result<NginxConfig, ConfigError> {
    parse_file_tracking(main).0
}

/// As [`parse_file`], also returning every file read, also on error (the
/// file with the error included), so that a watcher can follow a broken
/// include.
pub fn parse_file_tracking(main: &Path) -> (Result<NginxConfig, ConfigError>, Vec<PathBuf>) {
    let prefix = main
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let mut ctx = IncludeCtx {
        prefix,
        files: Vec::new(),
        allow_include: true,
        depth: 0,
    };
    match read_file(main, &mut ctx, None) {
        Ok(directives) => {
            let files = ctx.files.clone();
            (
                Ok(NginxConfig {
                    main: main.to_path_buf(),
                    directives,
                    files: ctx.files,
                }),
                files,
            )
        }
        Err(e) => {
            if ctx.files.is_empty() {
                ctx.files.push(main.to_path_buf());
            }
            (Err(e), ctx.files)
        }
    }
}

struct IncludeCtx {
    prefix: PathBuf,
    files: Vec<PathBuf>,
    allow_include: bool,
    depth: usize,
}

/// Includes nested deeper than this are a cycle (nginx has no limit but
/// runs out of file descriptors).
const MAX_INCLUDE_DEPTH: usize = 32;

fn read_file(
    path: &Path,
    ctx: &mut IncludeCtx,
    from: Option<&Directive>,
) -> Result<Vec<Directive>, ConfigError> {
    let text = std::fs::read(path).map_err(|e| match from {
        Some(d) => d.error(format!("cannot read included file {}: {e}", path.display())),
        None => ConfigError::new(path, 0, 0, format!("cannot read nginx configuration: {e}")),
    })?;
    ctx.files.push(path.to_path_buf());
    let file: Arc<Path> = Arc::from(path);
    let toks = lex(&text, &file)?;
    let mut p = Parser {
        toks,
        pos: 0,
        file,
        line_offset: 0,
    };
    p.block(ctx, false)
}

struct Parser {
    toks: Vec<(Tok, usize)>,
    pos: usize,
    file: Arc<Path>,
    line_offset: usize,
}

impl Parser {
    fn err(&self, line: usize, m: impl Into<String>) -> ConfigError {
        ConfigError::new(&self.file, line + self.line_offset, 0, m)
    }

    /// Directives until `}` (when `inner`) or the end.
    fn block(&mut self, ctx: &mut IncludeCtx, inner: bool) -> Result<Vec<Directive>, ConfigError> {
        let mut out: Vec<Directive> = Vec::new();
        let mut pending_notes: Vec<String> = Vec::new();
        loop {
            let Some((tok, line)) = self.toks.get(self.pos).cloned() else {
                if inner {
                    let line = self.toks.last().map_or(1, |t| t.1);
                    return Err(self.err(line, "unexpected end of file, expecting \"}\""));
                }
                return Ok(out);
            };
            self.pos += 1;
            match tok {
                Tok::Close if inner => {
                    // a note at the end of a block belongs to the block's owner
                    if !pending_notes.is_empty() {
                        out.push(self.note_holder(pending_notes, line));
                    }
                    return Ok(out);
                }
                Tok::Close => return Err(self.err(line, "unexpected \"}\"")),
                Tok::Semi => return Err(self.err(line, "unexpected \";\"")),
                Tok::Open => return Err(self.err(line, "unexpected \"{\"")),
                Tok::Note(n) => pending_notes.push(n),
                Tok::Word(name) => {
                    let mut args = Vec::new();
                    let block = loop {
                        let Some((t, l)) = self.toks.get(self.pos).cloned() else {
                            return Err(self.err(
                                line,
                                format!(
                                    "unexpected end of file in directive \"{name}\", expecting \";\" or \"{{\""
                                ),
                            ));
                        };
                        self.pos += 1;
                        match t {
                            Tok::Word(w) => args.push(w),
                            Tok::Note(n) => pending_notes.push(n),
                            Tok::Semi => break None,
                            Tok::Open => break Some(self.block(ctx, true)?),
                            Tok::Close => {
                                return Err(self.err(
                                    l,
                                    format!(
                                    "unexpected \"}}\" in directive \"{name}\", expecting \";\""
                                ),
                                ))
                            }
                        }
                    };
                    let mut d = Directive {
                        name,
                        args,
                        file: self.file.clone(),
                        line: line + self.line_offset,
                        block,
                        notes: std::mem::take(&mut pending_notes),
                    };
                    // notes at the end of the block describe the block
                    if let Some(b) = &mut d.block {
                        if let Some(pos) = b.iter().position(|x| x.name.is_empty()) {
                            let holder = b.remove(pos);
                            d.notes.extend(holder.notes);
                        }
                    }
                    if d.name == "include" && ctx.allow_include && d.block.is_none() {
                        out.extend(self.include(&d, ctx)?);
                    } else {
                        out.push(d);
                    }
                }
            }
        }
    }

    /// A directive with an empty name that only carries notes.
    fn note_holder(&self, notes: Vec<String>, line: usize) -> Directive {
        Directive {
            name: String::new(),
            args: Vec::new(),
            file: self.file.clone(),
            line: line + self.line_offset,
            block: None,
            notes,
        }
    }

    fn include(&self, d: &Directive, ctx: &mut IncludeCtx) -> Result<Vec<Directive>, ConfigError> {
        let [pattern] = d.args.as_slice() else {
            return Err(d.error("\"include\" takes exactly one file or pattern"));
        };
        if ctx.depth >= MAX_INCLUDE_DEPTH {
            return Err(d.error(format!(
                "includes nested more than {MAX_INCLUDE_DEPTH} deep (an include cycle?) at {pattern:?}"
            )));
        }
        let full = if Path::new(pattern).is_absolute() {
            PathBuf::from(pattern)
        } else {
            ctx.prefix.join(pattern)
        };
        let has_glob = pattern.bytes().any(|b| matches!(b, b'*' | b'?' | b'['));
        let mut paths = Vec::new();
        if has_glob {
            let text = full.to_string_lossy();
            let found = glob::glob(&text)
                .map_err(|e| d.error(format!("include pattern {pattern:?} is invalid: {e}")))?;
            for p in found {
                let p = p.map_err(|e| d.error(format!("include {pattern:?}: {e}")))?;
                if p.is_file() {
                    paths.push(p);
                }
            }
            paths.sort();
        } else {
            paths.push(full);
        }
        let mut out = Vec::new();
        ctx.depth += 1;
        for p in paths {
            out.extend(read_file(&p, ctx, Some(d))?);
        }
        ctx.depth -= 1;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(src: &str) -> Vec<Directive> {
        parse_str(src, Path::new("t.conf"), 1).expect("parses")
    }

    #[test]
    fn words_quotes_escapes_and_blocks() {
        let d = parse(
            "http {\n  server {\n    rewrite ^/a/(\\d+)\\.html$ \"/b/$1 x\" last;\n    set $v '${host}x';\n  }\n}\n",
        );
        let server = &d[0].block.as_ref().unwrap()[0];
        assert_eq!(server.line, 2);
        let rw = &server.block.as_ref().unwrap()[0];
        assert_eq!(rw.args, ["^/a/(\\d+)\\.html$", "/b/$1 x", "last"]);
        assert_eq!(rw.line, 3);
        assert_eq!(server.block.as_ref().unwrap()[1].args, ["$v", "${host}x"]);
    }

    #[test]
    fn variables_with_braces_in_bare_words_are_not_blocks() {
        let d = parse("return 301 https://${host}$request_uri;");
        assert_eq!(d[0].args, ["301", "https://${host}$request_uri"]);
    }

    #[test]
    fn notes_attach_to_the_next_directive_or_the_block_owner() {
        let d = parse(
            "# laneway: service=user-api\nupstream a { server 127.0.0.1:1; }\nupstream b {\n # laneway: service=b-api\n server 127.0.0.1:2;\n}\n",
        );
        assert_eq!(d[0].notes, ["service=user-api"]);
        assert_eq!(d[1].all_notes(), ["service=b-api"]);
        assert_eq!(d[1].block.as_ref().unwrap().len(), 1);
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse_str("a {\n b;\n", Path::new("t.conf"), 1).unwrap_err();
        assert!(e.to_string().contains("t.conf:"), "{e}");
        assert!(e.message.contains("expecting \"}\""), "{e}");
        let e = parse_str("a b\n", Path::new("t.conf"), 1).unwrap_err();
        assert_eq!(e.line, 1, "{e}");
        let e = parse_str("a;\n}\n", Path::new("t.conf"), 1).unwrap_err();
        assert_eq!(e.line, 2);
        let e = parse_str("a \"b\n", Path::new("t.conf"), 1).unwrap_err();
        assert!(e.message.contains("quoted"), "{e}");
    }

    #[test]
    fn quote_word_round_trips() {
        for w in [
            "plain",
            "",
            "a b",
            "it's",
            "^/a\\.b$",
            "x\\\"y",
            "back\\",
            "${host}/x",
            "a;b{c}",
            "tab\there",
            "\\\\n",
        ] {
            let src = format!("d {};", quote_word(w));
            let d = parse(&src);
            assert_eq!(d[0].args, [w], "{src}");
        }
    }

    #[test]
    fn includes_follow_globs_relative_to_the_main_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("conf.d")).unwrap();
        std::fs::write(
            dir.path().join("nginx.conf"),
            "http {\n include conf.d/*.conf;\n include none/*.conf;\n}\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("conf.d/b.conf"), "server { listen 2; }\n").unwrap();
        std::fs::write(dir.path().join("conf.d/a.conf"), "\nserver { listen 1; }\n").unwrap();
        let c = parse_file(&dir.path().join("nginx.conf")).unwrap();
        let http = c.directives[0].block.as_ref().unwrap();
        assert_eq!(http.len(), 2);
        assert_eq!(http[0].block.as_ref().unwrap()[0].args, ["1"]);
        assert_eq!(http[0].line, 2);
        assert!(http[0].file.ends_with("conf.d/a.conf"));
        assert_eq!(c.files.len(), 3);
        // a missing plain include names the include line
        std::fs::write(dir.path().join("nginx.conf"), "\ninclude missing.conf;\n").unwrap();
        let e = parse_file(&dir.path().join("nginx.conf")).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("missing.conf"), "{e}");
    }
}
