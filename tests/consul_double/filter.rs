//! The subset of Consul's `?filter=` language (go-bexpr) the double
//! understands: `<Meta>.<key> == "<value>"` and `<Tags> contains "<tag>"`
//! (or `"<tag>" in <Tags>`), joined by `and`. On `/v1/health/service` the
//! selectors are `Service.Meta` and `Service.Tags`; on
//! `/v1/catalog/services` they are `ServiceMeta` and `ServiceTags`.
//! Anything else is refused with 400 and a message saying what is supported,
//! rather than silently matching everything.

use serde_json::Value;

use super::http::ApiError;

/// Which endpoint's selectors apply.
#[derive(Clone, Copy, Debug)]
pub enum Dialect {
    /// `/v1/health/service/<name>`: fields of `{Node, Service, Checks}`.
    Health,
    /// `/v1/catalog/services`: fields of a catalog service node.
    Catalog,
}

impl Dialect {
    fn meta(self) -> &'static [&'static str] {
        match self {
            Dialect::Health => &["Service", "Meta"],
            Dialect::Catalog => &["ServiceMeta"],
        }
    }

    fn tags(self) -> &'static [&'static str] {
        match self {
            Dialect::Health => &["Service", "Tags"],
            Dialect::Catalog => &["ServiceTags"],
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Cond {
    MetaEquals(String, String),
    TagsContain(String),
}

/// A parsed filter: every condition must hold.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    conds: Vec<Cond>,
    dialect: Option<Dialect>,
}

impl Filter {
    /// Parses `?filter=`; empty means no filter.
    pub fn parse(expr: &str, dialect: Dialect) -> Result<Filter, ApiError> {
        let mut filter = Filter {
            conds: Vec::new(),
            dialect: Some(dialect),
        };
        if expr.trim().is_empty() {
            return Ok(filter);
        }
        let tokens = tokenize(expr).map_err(|e| refuse(expr, dialect, &e))?;
        for clause in tokens.split(|t| *t == Tok::Word("and".into())) {
            let cond = parse_clause(clause, dialect)
                .ok_or_else(|| refuse(expr, dialect, "unsupported or malformed condition"))?;
            filter.conds.push(cond);
        }
        Ok(filter)
    }

    /// Whether `item` (a rendered health entry or catalog service node)
    /// passes every condition.
    pub fn matches(&self, item: &Value) -> bool {
        let Some(dialect) = self.dialect else {
            return true;
        };
        self.conds.iter().all(|c| match c {
            Cond::MetaEquals(k, v) => {
                lookup(item, dialect.meta())
                    .and_then(|m| m.get(k))
                    .and_then(Value::as_str)
                    == Some(v.as_str())
            }
            Cond::TagsContain(t) => lookup(item, dialect.tags())
                .and_then(Value::as_array)
                .is_some_and(|tags| tags.iter().any(|x| x.as_str() == Some(t.as_str()))),
        })
    }
}

fn lookup<'a>(item: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(item, |v, k| v.get(*k))
}

fn refuse(expr: &str, dialect: Dialect, why: &str) -> ApiError {
    let (meta, tags) = (dialect.meta().join("."), dialect.tags().join("."));
    ApiError::bad_request(format!(
        "Failed to create boolean expression evaluator: {why} in {expr:?} \
         (the Consul double supports only `{meta}.<key> == \"<value>\"` and \
         `{tags} contains \"<tag>\"` joined by `and`)"
    ))
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    /// A selector or keyword: `Service.Meta.version`, `and`, `contains`.
    Word(String),
    Str(String),
    Eq,
}

fn tokenize(expr: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let mut chars = expr.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '"' || c == '`' {
            chars.next();
            let mut s = String::new();
            loop {
                match chars.next() {
                    None => return Err("unterminated string".into()),
                    Some(q) if q == c => break,
                    Some('\\') if c == '"' => match chars.next() {
                        Some(e) => s.push(e),
                        None => return Err("unterminated string".into()),
                    },
                    Some(x) => s.push(x),
                }
            }
            out.push(Tok::Str(s));
        } else if c == '=' {
            chars.next();
            if chars.next() != Some('=') {
                return Err("expected ==".into());
            }
            out.push(Tok::Eq);
        } else if c.is_alphanumeric() || c == '_' || c == '-' || c == '.' {
            let mut w = String::new();
            while let Some(&x) = chars.peek() {
                if x.is_alphanumeric() || x == '_' || x == '-' || x == '.' {
                    w.push(x);
                    chars.next();
                } else {
                    break;
                }
            }
            out.push(Tok::Word(w));
        } else {
            return Err(format!("unexpected {c:?}"));
        }
    }
    Ok(out)
}

fn parse_clause(clause: &[Tok], dialect: Dialect) -> Option<Cond> {
    let meta_prefix = format!("{}.", dialect.meta().join("."));
    let tags = dialect.tags().join(".");
    match clause {
        [Tok::Word(sel), Tok::Eq, Tok::Str(v)] => {
            let key = sel.strip_prefix(&meta_prefix)?;
            (!key.is_empty() && !key.contains('.')).then(|| Cond::MetaEquals(key.into(), v.clone()))
        }
        [Tok::Word(sel), Tok::Word(op), Tok::Str(t)] if op == "contains" && *sel == tags => {
            Some(Cond::TagsContain(t.clone()))
        }
        [Tok::Str(t), Tok::Word(op), Tok::Word(sel)] if op == "in" && *sel == tags => {
            Some(Cond::TagsContain(t.clone()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn supported_forms_match() {
        let entry = json!({"Service": {"Meta": {"version": "v2"}, "Tags": ["canary", "blue"]}});
        for expr in [
            r#"Service.Meta.version == "v2""#,
            r#"Service.Tags contains "canary""#,
            r#""blue" in Service.Tags"#,
            r#"Service.Meta.version == `v2` and Service.Tags contains "blue""#,
        ] {
            let f = Filter::parse(expr, Dialect::Health).unwrap();
            assert!(f.matches(&entry), "{expr}");
        }
        let f = Filter::parse(r#"Service.Meta.version == "v1""#, Dialect::Health).unwrap();
        assert!(!f.matches(&entry));
        assert!(!f.matches(&json!({"Service": {"Meta": null, "Tags": []}})));
        let c = Filter::parse(r#"ServiceMeta.version == "v2""#, Dialect::Catalog).unwrap();
        assert!(c.matches(&json!({"ServiceMeta": {"version": "v2"}})));
    }

    #[test]
    fn everything_else_is_refused() {
        for expr in [
            r#"Service.Port == "80""#,
            r#"Service.Meta.version != "v1""#,
            r#"Service.Meta.version == "v1" or Service.Tags contains "x""#,
            r#"not Service.Tags contains "x""#,
            r#"Service.Meta.version == "v1"#,
            r#"ServiceMeta.version == "v1""#,
            "Service.Tags contains",
        ] {
            let e = Filter::parse(expr, Dialect::Health).unwrap_err();
            assert_eq!(e.status, 400, "{expr}");
            assert!(e
                .msg
                .starts_with("Failed to create boolean expression evaluator"));
        }
    }
}
