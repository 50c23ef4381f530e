//! Maps between byte offsets, lines and key paths of one file's text, using
//! toml_edit's span-preserving parse. Only used to word messages, so every
//! function degrades to "don't know" rather than failing.

use std::ops::Range;

use toml_edit::{Document, Item, Table, Value};

use crate::keypath::Segment;

/// 1-based line and column (in characters) of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = floor_char_boundary(text, offset.min(text.len()));
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

fn floor_char_boundary(text: &str, mut offset: usize) -> usize {
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

/// Line where `path` is defined in `text`, together with how many leading
/// segments of `path` were found. A partial match still yields the line of
/// the deepest found key, which is the best place to point at when the full
/// path does not exist in this file.
pub(crate) fn find(text: &str, path: &[Segment]) -> Option<(usize, usize)> {
    let doc = Document::parse(text).ok()?;
    let mut node = Node::Table(doc.as_table());
    let mut found: Option<(usize, usize)> = None;
    for (depth, seg) in path.iter().enumerate() {
        let Some((span, child)) = node.step(seg) else {
            break;
        };
        // Implicit tables have no span of their own; keep pointing at the
        // closest ancestor that has one.
        let start = span.map(|s| s.start).or(found.map(|(start, _)| start));
        if let Some(start) = start {
            found = Some((start, depth + 1));
        }
        node = child;
    }
    let (start, depth) = found?;
    Some((line_col(text, start).0, depth))
}

#[derive(Clone, Copy)]
enum Node<'a> {
    Table(&'a Table),
    Item(&'a Item),
    Value(&'a Value),
}

impl<'a> Node<'a> {
    /// Moves one segment down, returning the child and the span that best
    /// marks where it is written: the key for table entries (a header's key,
    /// a dotted key or a plain key), the element itself inside arrays.
    fn step(self, seg: &Segment) -> Option<(Option<Range<usize>>, Node<'a>)> {
        let node = match self {
            Node::Item(Item::Table(t)) => Node::Table(t),
            Node::Item(Item::Value(v)) => Node::Value(v),
            other => other,
        };
        match (node, seg) {
            (Node::Table(t), Segment::Key(k)) => {
                let (key, child) = t.get_key_value(k)?;
                Some((key.span().or_else(|| child.span()), Node::Item(child)))
            }
            (Node::Value(Value::InlineTable(t)), Segment::Key(k)) => {
                let (key, child) = t.get_key_value(k)?;
                Some((key.span().or_else(|| child.span()), Node::Item(child)))
            }
            (Node::Item(Item::ArrayOfTables(a)), Segment::Index(i)) => {
                let t = a.get(*i)?;
                Some((t.span(), Node::Table(t)))
            }
            (Node::Value(Value::Array(a)), Segment::Index(i)) => {
                let v = a.get(*i)?;
                Some((v.span(), Node::Value(v)))
            }
            _ => None,
        }
    }
}

/// The key path whose value (or key) most tightly encloses `offset`.
pub(crate) fn path_at(text: &str, offset: usize) -> Vec<Segment> {
    let Ok(doc) = Document::parse(text) else {
        return Vec::new();
    };
    let mut finder = Finder {
        offset,
        best: None,
        path: Vec::new(),
    };
    finder.table(doc.as_table());
    finder.best.map(|(_, p)| p).unwrap_or_default()
}

struct Finder {
    offset: usize,
    best: Option<(usize, Vec<Segment>)>,
    path: Vec<Segment>,
}

impl Finder {
    fn consider(&mut self, span: Option<Range<usize>>) {
        let Some(span) = span else { return };
        let hit = span.contains(&self.offset) || (span.is_empty() && span.start == self.offset);
        if !hit {
            return;
        }
        let len = span.len();
        let better = match &self.best {
            None => true,
            Some((best_len, best_path)) => len < *best_len || (len == *best_len && self.path.len() > best_path.len()),
        };
        if better {
            self.best = Some((len, self.path.clone()));
        }
    }

    fn table(&mut self, t: &Table) {
        self.consider(t.span());
        for (k, _) in t.iter() {
            let Some((key, child)) = t.get_key_value(k) else {
                continue;
            };
            self.path.push(Segment::Key(k.to_owned()));
            self.consider(key.span());
            self.item(child);
            self.path.pop();
        }
    }

    fn item(&mut self, item: &Item) {
        match item {
            Item::None => {}
            Item::Table(t) => self.table(t),
            Item::ArrayOfTables(a) => {
                for (i, t) in a.iter().enumerate() {
                    self.path.push(Segment::Index(i));
                    self.table(t);
                    self.path.pop();
                }
            }
            Item::Value(v) => self.value(v),
        }
    }

    fn value(&mut self, v: &Value) {
        self.consider(v.span());
        match v {
            Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    self.path.push(Segment::Index(i));
                    self.value(v);
                    self.path.pop();
                }
            }
            Value::InlineTable(t) => {
                for (k, _) in t.iter() {
                    let Some((key, child)) = t.get_key_value(k) else {
                        continue;
                    };
                    self.path.push(Segment::Key(k.to_owned()));
                    self.consider(key.span());
                    self.item(child);
                    self.path.pop();
                }
            }
            _ => {}
        }
    }
}
