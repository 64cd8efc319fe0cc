//! Which of the job's variables reach the container. Pure functions over
//! the environment; the hostile cases are in the tests below.

use serde::Serialize;

/// A shell identifier: `[A-Za-z_][A-Za-z0-9_]*`. Anything else (bash
/// exported functions `BASH_FUNC_f%%`, `=`-tricks) is never passed.
pub fn valid_name(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
        && b.len() <= 256
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dropped {
    pub name: String,
    pub reason: String,
}

/// Split `vars` into those passed and those dropped (with the reason).
/// Values holding a newline, a carriage return or NUL, names that are not
/// identifiers, bash functions, and names matching `deny` are dropped.
pub fn filter<'a>(
    vars: impl IntoIterator<Item = (&'a str, &'a str)>,
    deny: &[glob::Pattern],
) -> (Vec<(String, String)>, Vec<Dropped>) {
    let mut pass = Vec::new();
    let mut dropped = Vec::new();
    for (k, v) in vars {
        let reason = if !valid_name(k) {
            Some("not a valid variable name".to_string())
        } else if v.starts_with("() {") {
            Some("a bash function".to_string())
        } else if v.contains(['\n', '\r', '\0']) {
            Some("its value holds a newline".to_string())
        } else {
            deny.iter()
                .find(|p| p.matches(k))
                .map(|p| format!("env.deny {}", p.as_str()))
        };
        match reason {
            Some(reason) => dropped.push(Dropped {
                name: sanitize_name(k),
                reason,
            }),
            None => pass.push((k.to_string(), v.to_string())),
        }
    }
    (pass, dropped)
}

/// A name safe to print in a log line.
fn sanitize_name(k: &str) -> String {
    k.chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

pub fn compile(deny: &[String]) -> Vec<glob::Pattern> {
    deny.iter()
        .filter_map(|p| glob::Pattern::new(p).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::policy::DEFAULT_ENV_DENY;

    #[test]
    fn hostile_table() {
        let deny = compile(
            &DEFAULT_ENV_DENY
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        );
        let vars = [
            ("LD_PRELOAD", "/tmp/evil.so"),
            ("LD_LIBRARY_PATH", "/x"),
            ("DOCKER_HOST", "tcp://evil:2375"),
            ("NVIDIA_VISIBLE_DEVICES", "all"),
            ("HOSTNAME", "login1"),
            ("BASH_FUNC_f%%", "() { id; }"),
            ("f", "() { echo pwn; }"),
            ("MULTI", "a\nb"),
            ("CR", "a\rb"),
            ("1BAD", "x"),
            ("A-B", "x"),
            ("", "x"),
            ("PATH", "/evil"),
            ("OK", "value with spaces = fine"),
            ("HOME", "/home/alice"),
        ];
        let (pass, dropped) = filter(vars.iter().copied(), &deny);
        let names: Vec<&str> = pass.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, vec!["OK", "HOME"]);
        assert_eq!(dropped.len(), vars.len() - 2);
    }

    #[test]
    fn names() {
        assert!(valid_name("_A1"));
        assert!(!valid_name("A B"));
        assert!(!valid_name("é"));
    }
}
