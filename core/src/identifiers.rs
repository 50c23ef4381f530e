//! containerd's identifier rule: names of namespaces, containers, leases and
//! similar objects. They end up in paths and keys elsewhere, so anything else
//! is refused before it reaches storage.

use crate::Error;

/// The longest identifier containerd accepts.
pub const MAX_LENGTH: usize = 76;

/// Checks `s` is alphanumeric runs joined by single `.`, `_` or `-` separators,
/// at most [`MAX_LENGTH`] bytes.
pub fn validate(s: &str) -> Result<(), Error> {
    if s.is_empty() {
        return Err(Error::InvalidArgument("identifier must not be empty".into()));
    }
    if s.len() > MAX_LENGTH {
        return Err(Error::InvalidArgument(format!(
            "identifier {s:?} greater than maximum length ({MAX_LENGTH} characters)"
        )));
    }
    let mut prev_separator = true; // no separator may lead
    for c in s.chars() {
        let separator = matches!(c, '.' | '_' | '-');
        if !(c.is_ascii_alphanumeric() || separator) || (separator && prev_separator) {
            return Err(Error::InvalidArgument(format!(
                "identifier {s:?} must match [A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*"
            )));
        }
        prev_separator = separator;
    }
    if prev_separator {
        return Err(Error::InvalidArgument(format!(
            "identifier {s:?} must not end with a separator"
        )));
    }
    Ok(())
}

/// The largest key + value size of one label, as containerd bounds it.
pub const MAX_LABEL_SIZE: usize = 4096;

/// Checks one label against containerd's size bound; keys must not be empty.
pub fn validate_label(key: &str, value: &str) -> Result<(), Error> {
    if key.is_empty() {
        return Err(Error::InvalidArgument("label key must not be empty".into()));
    }
    if key.len() + value.len() > MAX_LABEL_SIZE {
        return Err(Error::InvalidArgument(format!(
            "label key and value greater than maximum size ({MAX_LABEL_SIZE} bytes), key: {}",
            &key[..key.len().min(64)]
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_containerd_names() {
        for ok in ["default", "k8s.io", "a", "a-b_c.d", "A1", &"x".repeat(76)] {
            assert!(validate(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_the_rest() {
        for bad in ["", "-a", "a-", "a..b", "a/b", "..", "a b", "é", &"x".repeat(77), "a\0b"] {
            assert!(matches!(validate(bad), Err(Error::InvalidArgument(_))), "{bad:?}");
        }
    }

    #[test]
    fn bounds_labels() {
        assert!(validate_label("k", &"v".repeat(4095)).is_ok());
        assert!(validate_label("k", &"v".repeat(4096)).is_err());
        assert!(validate_label("", "v").is_err());
    }
}
