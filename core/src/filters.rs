//! containerd's filter language, used by every List RPC.
//!
//! A filter string is selectors joined by `,` (all must hold); a request's
//! list of filter strings selects what any one of them selects. A selector is
//! a field path (`id`, `labels."containerd.io/gc.root"`), optionally followed
//! by `==`, `!=` or `~=` (regular expression) and a value, bare or quoted
//! (`"..."` with backslash escapes, or `/.../` for a regex).

use regex::Regex;

use crate::Error;

/// Gives a filter the value of a field path on one object; `None` when the
/// field is absent (a present but empty label is `Some("")`).
pub trait Adaptor {
    fn field(&self, path: &[String]) -> Option<String>;
}

#[derive(Debug, Clone)]
enum Op {
    Present,
    Equal(String),
    NotEqual(String),
    Matches(Regex),
}

#[derive(Debug, Clone)]
struct Selector {
    path: Vec<String>,
    op: Op,
}

impl Selector {
    fn matches(&self, obj: &dyn Adaptor) -> bool {
        let value = obj.field(&self.path);
        match &self.op {
            Op::Present => value.is_some(),
            Op::Equal(v) => value.as_deref() == Some(v.as_str()),
            // As in containerd: an absent field reads as "".
            Op::NotEqual(v) => value.as_deref().unwrap_or("") != v,
            Op::Matches(re) => value.is_some_and(|s| re.is_match(&s)),
        }
    }
}

/// One or more filter strings, parsed; matches what any of them matches.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    any: Vec<Vec<Selector>>,
}

impl Filter {
    /// Parses a List request's filters. No filters (or only empty ones) match everything.
    pub fn parse_all<S: AsRef<str>>(filters: &[S]) -> Result<Filter, Error> {
        let mut any = Vec::new();
        for f in filters {
            let f = f.as_ref();
            if !f.trim().is_empty() {
                any.push(Parser::new(f).filter()?);
            }
        }
        Ok(Filter { any })
    }

    pub fn matches(&self, obj: &dyn Adaptor) -> bool {
        self.any.is_empty() || self.any.iter().any(|all| all.iter().all(|s| s.matches(obj)))
    }
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn new(src: &'a str) -> Self {
        Parser { src, pos: 0 }
    }

    fn error(&self, what: &str) -> Error {
        Error::InvalidArgument(format!(
            "filters: parse error: {what} at position {} in {:?}",
            self.pos, self.src
        ))
    }

    fn rest(&self) -> &'a str {
        &self.src[self.pos..]
    }

    fn skip_space(&mut self) {
        let trimmed = self.rest().trim_start();
        self.pos = self.src.len() - trimmed.len();
    }

    fn eat(&mut self, token: &str) -> bool {
        self.skip_space();
        if self.rest().starts_with(token) {
            self.pos += token.len();
            true
        } else {
            false
        }
    }

    fn filter(&mut self) -> Result<Vec<Selector>, Error> {
        let mut selectors = vec![self.selector()?];
        while self.eat(",") {
            selectors.push(self.selector()?);
        }
        self.skip_space();
        if !self.rest().is_empty() {
            return Err(self.error("unexpected input"));
        }
        Ok(selectors)
    }

    fn selector(&mut self) -> Result<Selector, Error> {
        let mut path = vec![self.field()?];
        while self.eat(".") {
            path.push(self.field()?);
        }
        let op = if self.eat("==") {
            Op::Equal(self.value()?)
        } else if self.eat("!=") {
            Op::NotEqual(self.value()?)
        } else if self.eat("~=") {
            let pattern = self.value()?;
            Op::Matches(Regex::new(&pattern).map_err(|e| self.error(&format!("bad regular expression: {e}")))?)
        } else {
            Op::Present
        };
        Ok(Selector { path, op })
    }

    fn field(&mut self) -> Result<String, Error> {
        self.skip_space();
        if self.rest().starts_with('"') {
            return self.quoted('"');
        }
        let len = self
            .rest()
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(self.rest().len());
        if len == 0 {
            return Err(self.error("expected a field name"));
        }
        let field = self.rest()[..len].to_string();
        self.pos += len;
        Ok(field)
    }

    fn value(&mut self) -> Result<String, Error> {
        self.skip_space();
        match self.rest().chars().next() {
            Some(q @ ('"' | '/')) => self.quoted(q),
            _ => {
                let len = self.rest().find(',').unwrap_or(self.rest().len());
                let value = self.rest()[..len].trim_end().to_string();
                if value.is_empty() {
                    return Err(self.error("expected a value"));
                }
                self.pos += len;
                Ok(value)
            }
        }
    }

    /// A string between `quote`s; backslash escapes the next character.
    fn quoted(&mut self, quote: char) -> Result<String, Error> {
        self.pos += quote.len_utf8();
        let mut out = String::new();
        let mut chars = self.rest().char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    // In a regex, keep the escape: it belongs to the pattern.
                    Some((_, e)) if quote == '/' && e != '/' => {
                        out.push('\\');
                        out.push(e);
                    }
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, 't')) => out.push('\t'),
                    Some((_, e)) => out.push(e),
                    None => break,
                },
                c if c == quote => {
                    self.pos += i + c.len_utf8();
                    return Ok(out);
                }
                c => out.push(c),
            }
        }
        Err(self.error("unterminated quoted string"))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    struct Obj {
        id: &'static str,
        labels: BTreeMap<&'static str, &'static str>,
    }

    impl Adaptor for Obj {
        fn field(&self, path: &[String]) -> Option<String> {
            match path {
                [f] if f == "id" => Some(self.id.to_string()),
                [f, key] if f == "labels" => self.labels.get(key.as_str()).map(|v| v.to_string()),
                _ => None,
            }
        }
    }

    fn obj() -> Obj {
        Obj {
            id: "sha256:abc",
            labels: BTreeMap::from([("containerd.io/gc.root", "x"), ("foo", "bar"), ("empty", "")]),
        }
    }

    fn m(filters: &[&str]) -> bool {
        Filter::parse_all(filters).unwrap().matches(&obj())
    }

    #[test]
    fn selects() {
        assert!(m(&[]));
        assert!(m(&[""]));
        assert!(m(&["id==sha256:abc"]));
        assert!(!m(&["id==sha256:abd"]));
        assert!(m(&["id!=x"]));
        assert!(m(&[r#"labels."containerd.io/gc.root""#]));
        assert!(m(&["labels.foo==bar,labels.empty"]));
        assert!(!m(&["labels.foo==bar,labels.missing"]));
        assert!(m(&["labels.missing", "labels.foo"]));
        assert!(m(&["id~=^sha256:"]));
        assert!(m(&["id~=/^sha256:a.c$/"]));
        assert!(m(&[r#"labels.foo=="bar""#]));
        assert!(m(&["labels.missing!=bar"]));
        assert!(!m(&["labels.missing~=."]));
    }

    #[test]
    fn refuses_garbage() {
        for bad in ["==x", "id==", "id==\"x", "id~=(", "id x", ",", "labels."] {
            assert!(
                matches!(Filter::parse_all(&[bad]), Err(Error::InvalidArgument(_))),
                "{bad}"
            );
        }
    }
}
