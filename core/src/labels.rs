//! Label updates through a field mask, the same for every kind of object.

use std::collections::BTreeMap;

use crate::{identifiers, Error};

/// Applies `paths` from an Update request to `current`: `labels` replaces
/// them all, `labels.<key>` sets that key from `requested` or removes it when
/// `requested` has no non-empty value for it. An empty mask replaces all.
/// Paths that are not about labels are left to the caller and must be
/// filtered out before.
pub fn apply_update(
    current: &mut BTreeMap<String, String>,
    requested: &BTreeMap<String, String>,
    paths: &[String],
) -> Result<(), Error> {
    if paths.is_empty() {
        *current = requested.clone();
    }
    for path in paths {
        match path.strip_prefix("labels.") {
            None if path == "labels" => *current = requested.clone(),
            None => return Err(Error::InvalidArgument(format!("cannot update field {path:?}"))),
            Some(key) => match requested.get(key).filter(|v| !v.is_empty()) {
                Some(value) => {
                    current.insert(key.to_string(), value.clone());
                }
                None => {
                    current.remove(key);
                }
            },
        }
    }
    validate(current)
}

/// Every label within containerd's size bound.
pub fn validate(labels: &BTreeMap<String, String>) -> Result<(), Error> {
    labels.iter().try_for_each(|(k, v)| identifiers::validate_label(k, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn masks() {
        let mut current = map(&[("a", "1"), ("b", "2")]);
        apply_update(
            &mut current,
            &map(&[("c", "3")]),
            &["labels.c".into(), "labels.a".into()],
        )
        .unwrap();
        assert_eq!(current, map(&[("b", "2"), ("c", "3")]));
        apply_update(&mut current, &map(&[("x", "y")]), &["labels".into()]).unwrap();
        assert_eq!(current, map(&[("x", "y")]));
        apply_update(&mut current, &map(&[]), &[]).unwrap();
        assert!(current.is_empty());
        assert!(apply_update(&mut current, &map(&[]), &["size".into()]).is_err());
        let big = "v".repeat(5000);
        assert!(apply_update(&mut current, &map(&[("k", &big)]), &["labels.k".into()]).is_err());
    }
}
