//! Content digests (`sha256:<hex>`), parsed and checked before anything
//! uses one as a key or a path.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Algorithm {
    Sha256,
    Sha384,
    Sha512,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha384 => "sha384",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// Hex characters in an encoded digest of this algorithm.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha384 => 96,
            Algorithm::Sha512 => 128,
        }
    }
}

/// A validated digest: a known algorithm and lowercase hex of the right length.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

impl Digest {
    pub fn new(algorithm: Algorithm, hex: String) -> Result<Digest, Error> {
        let bad = |why: &str| Error::InvalidArgument(format!("invalid digest {}:{hex:?}: {why}", algorithm.name()));
        if hex.len() != algorithm.hex_len() {
            return Err(bad(&format!("{} hex characters expected", algorithm.hex_len())));
        }
        if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad("only lowercase hex allowed"));
        }
        Ok(Digest { algorithm, hex })
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The hex part: safe as a file name once parsed.
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl FromStr for Digest {
    type Err = Error;

    fn from_str(s: &str) -> Result<Digest, Error> {
        let (algorithm, hex) = s
            .split_once(':')
            .ok_or_else(|| Error::InvalidArgument(format!("invalid digest {s:?}: no algorithm")))?;
        let algorithm = match algorithm {
            "sha256" => Algorithm::Sha256,
            "sha384" => Algorithm::Sha384,
            "sha512" => Algorithm::Sha512,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "invalid digest {s:?}: unsupported algorithm {other:?}"
                )))
            }
        };
        Digest::new(algorithm, hex.to_string())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.hex)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        let ok = format!("sha256:{}", "a".repeat(64));
        assert_eq!(ok.parse::<Digest>().unwrap().to_string(), ok);
        assert!(format!("sha512:{}", "0".repeat(128)).parse::<Digest>().is_ok());
        for bad in [
            "sha256:xyz".to_string(),
            "sha256:../../etc/passwd".to_string(),
            format!("md5:{}", "a".repeat(32)),
            format!("sha256:{}", "A".repeat(64)),
            format!("sha256:{}", "a".repeat(63)),
            "a".repeat(64),
            format!("sha256:{}\0", "a".repeat(63)),
        ] {
            assert!(
                matches!(bad.parse::<Digest>(), Err(Error::InvalidArgument(_))),
                "{bad:?}"
            );
        }
    }
}
