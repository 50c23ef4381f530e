//! Images over the metadata store: a name in a namespace for a target
//! descriptor, the root from which garbage collection keeps its content.

use std::{collections::BTreeMap, sync::Arc, time::SystemTime};

use serde::{Deserialize, Serialize};

use crate::{
    diff::Descriptor, digest::Digest, filters::Adaptor, identifiers, labels, metadata::MetaStore, records::Records,
    Error,
};

/// `<ns>/<name>` -> [`Record`].
pub const TREE: &str = "images";

#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub target: Descriptor,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
}

/// Filter fields: `name`, `target.digest`, `target.mediatype`, `labels.<key>`.
impl Adaptor for Image {
    fn field(&self, path: &[String]) -> Option<String> {
        match path {
            [f] if f == "name" => Some(self.name.clone()),
            [f, g] if f == "target" && g == "digest" => Some(self.target.digest.to_string()),
            [f, g] if f == "target" && g == "mediatype" => Some(self.target.media_type.clone()),
            [f, rest @ ..] if f == "labels" && !rest.is_empty() => self.labels.get(&rest.join(".")).cloned(),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub labels: BTreeMap<String, String>,
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    pub annotations: BTreeMap<String, String>,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
}

impl Record {
    fn into_image(self, name: String) -> Image {
        Image {
            name,
            labels: self.labels,
            target: Descriptor {
                media_type: self.media_type,
                digest: self.digest,
                size: self.size,
                annotations: self.annotations,
            },
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

/// The longest image name accepted.
pub const MAX_NAME_LEN: usize = 4096;

fn validate(image: &Image) -> Result<(), Error> {
    if image.name.is_empty() {
        return Err(Error::InvalidArgument("image name must not be empty".into()));
    }
    if image.name.len() > MAX_NAME_LEN || image.name.chars().any(char::is_control) {
        return Err(Error::InvalidArgument(format!("invalid image name {:?}", image.name)));
    }
    if image.target.media_type.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "image {:?}: target media type must be set",
            image.name
        )));
    }
    labels::validate(&image.labels)
}

fn not_found(name: &str) -> Error {
    Error::NotFound(format!("image {name:?}"))
}

#[derive(Clone)]
pub struct Images {
    records: Records,
}

impl Images {
    pub fn new(store: Arc<dyn MetaStore>) -> Self {
        Images {
            records: Records::new(store, TREE),
        }
    }

    pub fn get(&self, ns: &str, name: &str) -> Result<Image, Error> {
        identifiers::validate(ns)?;
        let record: Record = self.records.get(ns, name, || not_found(name))?;
        Ok(record.into_image(name.to_string()))
    }

    pub fn list(&self, ns: &str) -> Result<Vec<Image>, Error> {
        identifiers::validate(ns)?;
        Ok(self
            .records
            .list::<Record>(ns)?
            .into_iter()
            .map(|(name, record)| record.into_image(name))
            .collect())
    }

    pub fn create(&self, ns: &str, image: &Image) -> Result<Image, Error> {
        identifiers::validate(ns)?;
        validate(image)?;
        let now = SystemTime::now();
        let record = Record {
            labels: image.labels.clone(),
            media_type: image.target.media_type.clone(),
            digest: image.target.digest.clone(),
            size: image.target.size,
            annotations: image.target.annotations.clone(),
            created_at: now,
            updated_at: now,
        };
        self.records.create(ns, &image.name, &record, || {
            Error::AlreadyExists(format!("image {:?}", image.name))
        })?;
        Ok(record.into_image(image.name.clone()))
    }

    /// Sets what `paths` name (`labels`, `labels.<key>`, `target`), or
    /// the labels and the target when `paths` is empty. The target is only
    /// needed when it is to be set: a client that changes labels alone
    /// sends none.
    pub fn update(
        &self,
        ns: &str,
        name: &str,
        labels: &BTreeMap<String, String>,
        target: Option<&Descriptor>,
        paths: &[String],
    ) -> Result<Image, Error> {
        identifiers::validate(ns)?;
        let record = self.records.update(
            ns,
            name,
            || not_found(name),
            |mut record: Record| {
                let (target_paths, label_paths): (Vec<&String>, Vec<&String>) = paths
                    .iter()
                    .partition(|p| p.as_str() == "target" || p.starts_with("target."));
                if paths.is_empty() || !target_paths.is_empty() {
                    let target = target
                        .filter(|t| !t.media_type.is_empty())
                        .ok_or_else(|| Error::InvalidArgument("image target media type must be set".into()))?;
                    record.media_type = target.media_type.clone();
                    record.digest = target.digest.clone();
                    record.size = target.size;
                    record.annotations = target.annotations.clone();
                }
                let label_paths: Vec<String> = label_paths.into_iter().cloned().collect();
                if paths.is_empty() || !label_paths.is_empty() {
                    labels::apply_update(&mut record.labels, labels, &label_paths)?;
                }
                record.updated_at = SystemTime::now();
                Ok(record)
            },
        )?;
        Ok(record.into_image(name.to_string()))
    }

    pub fn delete(&self, ns: &str, name: &str) -> Result<(), Error> {
        identifiers::validate(ns)?;
        self.records.delete(ns, name, || not_found(name))
    }
}
