//! Image references: a strict grammar (docker's own), normalized to the
//! full form the policy globs match (`docker.io/library/alpine:latest`).

use crate::core::error::{Error, Result};
use serde::Serialize;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageRef {
    pub domain: String,
    pub path: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl ImageRef {
    pub fn parse(s: &str) -> Result<ImageRef> {
        let bad = |why: &str| {
            Error::Malformed(format!(
                "image reference {s:?} {why}; use a name like registry.example.edu/project/image:tag"
            ))
        };
        if s.is_empty() || s.len() > 255 {
            return Err(bad("is empty or longer than 255 characters"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                let hex = d
                    .strip_prefix("sha256:")
                    .ok_or_else(|| bad("has a digest that is not sha256"))?;
                if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                    return Err(bad("has a malformed sha256 digest"));
                }
                (r, Some(d.to_string()))
            }
            None => (s, None),
        };
        // A tag is after the last ':' that follows the last '/'.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.as_bytes()[0] != b'.'
                && t.as_bytes()[0] != b'-'
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
            if !ok {
                return Err(bad("has an invalid tag"));
            }
        }
        let mut comps: Vec<&str> = name.split('/').collect();
        let domain = if comps.len() > 1
            && (comps[0].contains('.') || comps[0].contains(':') || comps[0] == "localhost")
        {
            let d = comps.remove(0);
            if !valid_domain(d) {
                return Err(bad("has an invalid registry host"));
            }
            d.to_string()
        } else {
            "docker.io".to_string()
        };
        if comps.is_empty() || !comps.iter().all(|c| valid_component(c)) {
            return Err(bad(
                "has an invalid name component (lowercase letters, digits, '.', '_', '-' only)",
            ));
        }
        // Docker's own normalization: the legacy name of Docker Hub is
        // Docker Hub (policy globs and berth's own checks see one name).
        let domain = if domain == "index.docker.io" {
            "docker.io".to_string()
        } else {
            domain
        };
        if domain == "docker.io" && comps.len() == 1 {
            comps.insert(0, "library");
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some("latest".to_string()),
            (None, Some(_)) => None,
        };
        Ok(ImageRef {
            domain,
            path: comps.join("/"),
            tag,
            digest,
        })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !b[0].is_ascii_lowercase() && !b[0].is_ascii_digit() {
        return false;
    }
    if !b[b.len() - 1].is_ascii_lowercase() && !b[b.len() - 1].is_ascii_digit() {
        return false;
    }
    // Separators: '.', '_', '__', or runs of '-', never two separators mixed.
    let mut prev_sep: Option<u8> = None;
    let mut run = 0;
    for &ch in b {
        match ch {
            b'a'..=b'z' | b'0'..=b'9' => {
                prev_sep = None;
                run = 0;
            }
            b'.' | b'_' | b'-' => {
                match prev_sep {
                    None => {}
                    Some(p) if p == ch && (ch == b'-' || (ch == b'_' && run < 2)) => {}
                    _ => return false,
                }
                prev_sep = Some(ch);
                run += 1;
            }
            _ => return false,
        }
    }
    true
}

fn valid_domain(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    !host.is_empty()
        && host.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// A bundle name (SPEC §6): 1–64 of `[A-Za-z0-9._-]`, starting alphanumeric.
pub fn valid_bundle_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.as_bytes()[0].is_ascii_alphanumeric()
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !n.contains("..")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> String {
        ImageRef::parse(s).unwrap().to_string()
    }

    #[test]
    fn the_legacy_hub_name_is_the_hub() {
        let r = ImageRef::parse("index.docker.io/berth-bundle/x:1").unwrap();
        assert_eq!(r.to_string(), "docker.io/berth-bundle/x:1");
        assert_eq!(
            ImageRef::parse("index.docker.io/alpine")
                .unwrap()
                .to_string(),
            "docker.io/library/alpine:latest"
        );
    }

    #[test]
    fn normalizes() {
        assert_eq!(n("alpine"), "docker.io/library/alpine:latest");
        assert_eq!(n("alpine:3.19"), "docker.io/library/alpine:3.19");
        assert_eq!(n("berth-test/busybox:1"), "docker.io/berth-test/busybox:1");
        assert_eq!(n("localhost:5000/x/y"), "localhost:5000/x/y:latest");
        assert_eq!(
            n("registry.example.edu/p/img:v1"),
            "registry.example.edu/p/img:v1"
        );
        let d = format!("ubuntu@sha256:{}", "a".repeat(64));
        assert_eq!(
            n(&d),
            format!("docker.io/library/ubuntu@sha256:{}", "a".repeat(64))
        );
    }

    #[test]
    fn refuses_hostile_forms() {
        for bad in [
            "",
            "-v",
            "--privileged",
            "Alpine",
            "a b",
            "a/../b",
            "a//b",
            "a:",
            "a:-x",
            "a@sha256:zz",
            "/abs",
            "a\nb",
            "a;b",
            "a:b:c/d",
            "registry..x/y",
            "a/-b",
            "a__-b",
            "x/.y",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bundle_names() {
        assert!(valid_bundle_name("pytorch-2.1_cuda"));
        for bad in ["", "..", "a/b", ".hidden", "-x", "a..b", &"x".repeat(65)] {
            assert!(!valid_bundle_name(bad), "{bad:?}");
        }
    }
}
