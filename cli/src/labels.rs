//! `KEY=VALUE` label arguments, read and shown the way ctr does.

use std::collections::{BTreeMap, HashMap};

use anyhow::bail;

/// Reads label arguments into a map. A bare `KEY` means `KEY=true` and a
/// later repeat of a key wins, both as in ctr, so scripts carry over.
/// `KEY=` keeps its empty value: for `namespaces label` that is how a label
/// is cleared.
pub fn parse(args: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    for arg in args {
        let (key, value) = arg.split_once('=').unwrap_or((arg, "true"));
        if key.is_empty() {
            bail!("invalid label {arg:?}: the key is empty");
        }
        labels.insert(key.to_string(), value.to_string());
    }
    Ok(labels)
}

/// `k=v,k2=v2`, sorted by key so output is stable whatever order the
/// daemon's map arrives in.
pub fn format(labels: &HashMap<String, String>) -> String {
    let sorted: BTreeMap<_, _> = labels.iter().collect();
    sorted
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn key_value_pairs() {
        let got = parse(&args(&["a=1", "b=x=y"])).unwrap();
        assert_eq!(got["a"], "1");
        assert_eq!(got["b"], "x=y");
    }

    #[test]
    fn bare_key_is_true_and_empty_value_is_kept() {
        let got = parse(&args(&["flag", "gone="])).unwrap();
        assert_eq!(got["flag"], "true");
        assert_eq!(got["gone"], "");
    }

    #[test]
    fn last_repeat_wins() {
        let got = parse(&args(&["a=1", "a=2"])).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got["a"], "2");
    }

    #[test]
    fn empty_key_is_refused() {
        let err = parse(&args(&["=v"])).unwrap_err();
        assert_eq!(err.to_string(), "invalid label \"=v\": the key is empty");
    }

    #[test]
    fn format_sorts_by_key() {
        let labels: HashMap<String, String> = [("b", "2"), ("a", "1"), ("c", "")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(format(&labels), "a=1,b=2,c=");
        assert_eq!(format(&HashMap::new()), "");
    }
}
