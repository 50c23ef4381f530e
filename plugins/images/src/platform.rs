//! Platforms: parsing `os/arch[/variant]`, the host's, and matching an
//! index entry against what was asked for.

use corten_core::{transfer::Platform, Error};

/// The architecture name OCI uses for `arch` (Go's GOARCH spelling).
fn oci_arch(arch: &str) -> &str {
    match arch {
        "x86_64" | "x86-64" => "amd64",
        "aarch64" => "arm64",
        "i386" | "i686" | "x86" => "386",
        "armhf" | "armel" | "armv7l" | "armv6l" => "arm",
        other => other,
    }
}

/// The platform with aliases resolved, so equal platforms compare equal:
/// `linux/aarch64` and `linux/arm64/v8` are both `linux/arm64`, and a bare
/// `arm` is `arm/v7`.
pub fn normalize(p: &Platform) -> Platform {
    let os = p.os.to_ascii_lowercase();
    let raw_arch = p.architecture.to_ascii_lowercase();
    let architecture = oci_arch(&raw_arch).to_string();
    let mut variant = p.variant.to_ascii_lowercase();
    match (raw_arch.as_str(), architecture.as_str()) {
        (_, "arm64") if variant == "v8" || variant == "8" => variant.clear(),
        ("armhf", _) if variant.is_empty() => variant = "v7".into(),
        ("armel", _) if variant.is_empty() => variant = "v6".into(),
        (_, "arm") if variant.is_empty() => variant = "v7".into(),
        (_, "arm") if !variant.starts_with('v') => variant = format!("v{variant}"),
        _ => {}
    }
    Platform {
        os,
        architecture,
        variant,
    }
}

/// The platform this daemon runs on.
pub fn host() -> Platform {
    normalize(&Platform {
        os: std::env::consts::OS.to_string(),
        architecture: std::env::consts::ARCH.to_string(),
        variant: String::new(),
    })
}

/// `linux`, `linux/arm64`, `linux/arm/v7`, or a bare architecture
/// (`arm64`, meaning linux/arm64).
pub fn parse(text: &str) -> Result<Platform, Error> {
    let bad = |why: &str| Error::InvalidArgument(format!("invalid platform {text:?}: {why}"));
    let parts: Vec<&str> = text.split('/').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || !p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.'))
    {
        return Err(bad("expected os[/architecture[/variant]]"));
    }
    let platform = match parts.as_slice() {
        [one] if matches!(*one, "linux" | "windows" | "darwin" | "freebsd") => Platform {
            os: one.to_string(),
            architecture: host().architecture,
            variant: String::new(),
        },
        [arch] => Platform {
            os: "linux".into(),
            architecture: arch.to_string(),
            variant: String::new(),
        },
        [os, arch] => Platform {
            os: os.to_string(),
            architecture: arch.to_string(),
            variant: String::new(),
        },
        [os, arch, variant] => Platform {
            os: os.to_string(),
            architecture: arch.to_string(),
            variant: variant.to_string(),
        },
        _ => return Err(bad("too many parts")),
    };
    Ok(normalize(&platform))
}

/// Whether an image for `have` runs where `want` is asked for. A wanted
/// platform without a variant accepts any variant.
pub fn matches(want: &Platform, have: &Platform) -> bool {
    let (want, have) = (normalize(want), normalize(have));
    want.os == have.os
        && want.architecture == have.architecture
        && (want.variant.is_empty() || want.variant == have.variant)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(os: &str, arch: &str, variant: &str) -> Platform {
        Platform {
            os: os.into(),
            architecture: arch.into(),
            variant: variant.into(),
        }
    }

    #[test]
    fn parses() {
        assert_eq!(parse("linux/arm64").unwrap(), p("linux", "arm64", ""));
        assert_eq!(parse("linux/arm64/v8").unwrap(), p("linux", "arm64", ""));
        assert_eq!(parse("linux/arm").unwrap(), p("linux", "arm", "v7"));
        assert_eq!(parse("linux/x86_64").unwrap(), p("linux", "amd64", ""));
        assert_eq!(parse("arm64").unwrap(), p("linux", "arm64", ""));
        for bad in ["", "linux/", "a/b/c/d", "linux/amd 64"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn match_rules() {
        assert!(matches(&p("linux", "amd64", ""), &p("linux", "amd64", "")));
        assert!(matches(&p("linux", "arm64", ""), &p("linux", "arm64", "v8")));
        assert!(!matches(&p("linux", "arm64", ""), &p("linux", "amd64", "")));
        assert!(matches(&p("linux", "arm", ""), &p("linux", "arm", "v7")));
        assert!(!matches(&p("linux", "arm", "v6"), &p("linux", "arm", "v7")));
        assert_eq!(host().os, std::env::consts::OS);
    }
}
