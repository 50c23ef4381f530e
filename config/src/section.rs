//! Per-plugin decoding of raw sections, with errors and warnings that point
//! into whichever file wrote the offending key.

use std::path::PathBuf;

use serde::de::DeserializeOwned;

use crate::diagnose;
use crate::error::ConfigError;
use crate::keypath::{self, Segment};
use crate::load::Loaded;
use crate::locate;
use crate::validate;
use crate::warning::UNKNOWN_KEY;

impl Loaded {
    /// Decodes the section at `path` (e.g. `["plugins",
    /// "io.containerd.metadata.v1.sled"]`) into `T`, or `T::default()` when
    /// no file has it.
    ///
    /// Each file that writes the section is checked on its own first, so a
    /// bad value is reported at its own file and line even when a later
    /// import replaces the section. Keys `T` does not know are warnings.
    pub fn section<T>(&self, path: &[&str]) -> Result<(T, Vec<crate::Warning>), ConfigError>
    where
        T: DeserializeOwned + Default,
    {
        let base = keypath::from_keys(path);
        let mut warnings = Vec::new();
        for source in &self.sources {
            let root = toml::de::DeTable::parse(&source.text)
                .map_err(|err| diagnose::invalid(&source.path, &source.text, &err, &[]))?;
            let Some(value) = take(root, path) else {
                continue;
            };
            let mut unknown = Vec::new();
            let de = toml::de::ValueDeserializer::from(value);
            let checked: Result<T, _> = serde_ignored::deserialize(de, |p| {
                unknown.push(keypath::from_ignored(&p));
            });
            checked.map_err(|err| diagnose::invalid(&source.path, &source.text, &err, &base))?;
            for rel in unknown {
                let full: Vec<Segment> = base.iter().cloned().chain(rel).collect();
                warnings.push(validate::warning(
                    &source.path,
                    &source.text,
                    &full,
                    UNKNOWN_KEY.to_owned(),
                ));
            }
        }

        // The effective value comes from the merged config, not the files,
        // so changes the daemon made to `config` after loading are honoured.
        let Some(value) = self.effective(path) else {
            return Ok((T::default(), warnings));
        };
        let typed = value.try_into().map_err(|err: toml::de::Error| {
            let (file, line) = self.locate(path).unwrap_or_else(|| {
                let main = self.sources.first().map(|s| s.path.clone());
                (main.unwrap_or_default(), 1)
            });
            ConfigError::Invalid {
                file,
                line,
                column: None,
                key: keypath::display(&base),
                message: err.message().to_owned(),
            }
        })?;
        Ok((typed, warnings))
    }

    /// File and 1-based line where `path` is last defined: the last source in
    /// merge order that has the whole path.
    pub fn locate(&self, path: &[&str]) -> Option<(PathBuf, usize)> {
        let segs = keypath::from_keys(path);
        self.sources.iter().rev().find_map(|source| {
            let (line, depth) = locate::find(&source.text, &segs)?;
            (depth == segs.len()).then(|| (source.path.clone(), line))
        })
    }

    fn effective(&self, path: &[&str]) -> Option<toml::Value> {
        let mut value = toml::Value::try_from(&self.config).ok()?;
        for key in path {
            value = match value {
                toml::Value::Table(mut t) => t.remove(*key)?,
                _ => return None,
            };
        }
        Some(value)
    }
}

/// Detaches the value at `path` from a parsed document, spans intact.
fn take<'i>(root: toml::Spanned<toml::de::DeTable<'i>>, path: &[&str]) -> Option<toml::Spanned<toml::de::DeValue<'i>>> {
    let span = root.span();
    let mut value = toml::Spanned::new(span, toml::de::DeValue::Table(root.into_inner()));
    for key in path {
        value = match value.into_inner() {
            toml::de::DeValue::Table(mut t) => t.remove(*key)?,
            _ => return None,
        };
    }
    Some(value)
}
