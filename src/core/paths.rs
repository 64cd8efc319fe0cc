//! Pure path grammar: absolute, normalized, and free of characters docker's
//! flag parsers give a meaning to.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// An absolute path with no `.` or `..` component, `//` and a trailing `/`
/// collapsed. `None` if the path is relative or has `.`/`..`.
pub fn normalize_abs(p: &Path) -> Option<PathBuf> {
    let bytes = p.as_os_str().as_bytes();
    if bytes.first() != Some(&b'/') {
        return None;
    }
    let mut out = PathBuf::from("/");
    for seg in bytes.split(|b| *b == b'/') {
        match seg {
            b"" => continue,
            b"." | b".." => return None,
            s => out.push(std::ffi::OsStr::from_bytes(s)),
        }
    }
    Some(out)
}

/// Whether `p` is `root` or below it, by whole components (`/storage1`
/// never contains `/storage1x`).
pub fn is_under(p: &Path, root: &Path) -> bool {
    p.starts_with(root)
}

/// Why a path may not be handed to docker, if it may not: characters that
/// `--mount`/`-v` parse (`,` `:` `=` `"`), quotes, control bytes, non-UTF-8.
pub fn unsafe_char(p: &Path) -> Option<String> {
    let Some(s) = p.to_str() else {
        return Some("bytes that are not UTF-8".into());
    };
    for c in s.chars() {
        match c {
            ',' | ':' | '=' | '"' | '\'' | '\\' => return Some(format!("the character {c:?}")),
            c if c.is_control() => return Some(format!("the control character {:?}", c)),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn normalize() {
        let n = |s: &str| normalize_abs(Path::new(s)).map(|p| p.to_string_lossy().into_owned());
        assert_eq!(n("/a//b/").as_deref(), Some("/a/b"));
        assert_eq!(n("/").as_deref(), Some("/"));
        assert_eq!(n("a/b"), None);
        assert_eq!(n("/a/../b"), None);
        assert_eq!(n("/a/./b"), None);
        assert_eq!(n("/a/.."), None);
        assert_eq!(n(""), None);
    }

    #[test]
    fn component_match() {
        assert!(is_under(
            Path::new("/storage1/fs1/x"),
            Path::new("/storage1/fs1")
        ));
        assert!(is_under(
            Path::new("/storage1/fs1"),
            Path::new("/storage1/fs1")
        ));
        assert!(!is_under(
            Path::new("/storage1x/fs1"),
            Path::new("/storage1")
        ));
        assert!(!is_under(
            Path::new("/storage1/fs10"),
            Path::new("/storage1/fs1")
        ));
    }

    #[test]
    fn unsafe_chars() {
        for bad in [
            "/a:b", "/a,b", "/a=b", "/a\"b", "/a\nb", "/a\tb", "/a\x7fb", "/a'b",
        ] {
            assert!(unsafe_char(Path::new(bad)).is_some(), "{bad:?}");
        }
        assert!(unsafe_char(Path::new("/storage1/fs1/ok-dir_1.x y")).is_none());
        let nonutf8 = std::ffi::OsStr::from_bytes(b"/a\xffb");
        assert!(unsafe_char(Path::new(nonutf8)).is_some());
    }

    proptest! {
        #[test]
        fn normalized_paths_have_no_dot_components(s in "(/[a-z.]{0,3}){0,6}/?") {
            if let Some(p) = normalize_abs(Path::new(&s)) {
                prop_assert!(p.is_absolute());
                for c in p.components().skip(1) {
                    prop_assert!(matches!(c, std::path::Component::Normal(_)));
                }
                // Normalizing is idempotent.
                prop_assert_eq!(normalize_abs(&p), Some(p.clone()));
            } else {
                prop_assert!(s.is_empty() || s.split('/').any(|c| c == "." || c == ".."));
            }
        }

        #[test]
        fn under_is_component_wise(a in "[a-c]{1,3}", b in "[a-c]{1,3}") {
            let root = PathBuf::from(format!("/r/{a}"));
            let p = PathBuf::from(format!("/r/{b}/x"));
            prop_assert_eq!(is_under(&p, &root), a == b);
        }
    }
}
