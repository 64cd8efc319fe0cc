//! The documentation follows the code: generated man pages and completions
//! are current, every command and option is documented, every policy key is
//! in berth-policy(5) and docs/policy.md with its default, and every denial
//! rule the code can emit is explained in docs/troubleshooting.md.

#[path = "../examples/gen-docs.rs"]
mod gen_docs;

use clap::CommandFactory;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn regenerate_hint() -> String {
    format!(
        "regenerate with `{}` and commit man/ and packaging/completions/",
        gen_docs::REGENERATE
    )
}

#[test]
fn generated_pages_and_completions_are_current() {
    let tmp = tempfile::tempdir().unwrap();
    let written = gen_docs::write_all(tmp.path()).unwrap();
    let mut problems = Vec::new();
    for rel in &written {
        let fresh = std::fs::read(tmp.path().join(rel)).unwrap();
        match std::fs::read(repo().join(rel)) {
            Ok(committed) if committed == fresh => {}
            Ok(_) => problems.push(format!("{} is stale", rel.display())),
            Err(_) => problems.push(format!("{} is missing", rel.display())),
        }
    }
    // A committed page of a subcommand that no longer exists.
    for e in std::fs::read_dir(repo().join("man")).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().to_string();
        let rel = Path::new("man").join(&name);
        if name.starts_with("berth") && name.ends_with(".1") && !written.contains(&rel) {
            problems.push(format!("{} documents no current command", rel.display()));
        }
    }
    assert!(
        problems.is_empty(),
        "{}\n{}",
        problems.join("\n"),
        regenerate_hint()
    );
}

/// Every visible command below `berth`, with its path of names.
fn commands() -> Vec<(Vec<String>, clap::Command)> {
    fn walk(cmd: &clap::Command, path: Vec<String>, out: &mut Vec<(Vec<String>, clap::Command)>) {
        out.push((path.clone(), cmd.clone()));
        for s in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            let mut p = path.clone();
            p.push(s.get_name().to_string());
            walk(s, p, out);
        }
    }
    let mut cmd = berth::cli::Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut out = Vec::new();
    walk(&cmd, Vec::new(), &mut out);
    out
}

#[test]
fn every_command_has_a_page_and_every_option_has_help() {
    let mut problems = Vec::new();
    let cmds = commands();
    assert!(cmds.len() >= 6, "the command tree looks empty");
    for (path, cmd) in &cmds {
        let p: Vec<&str> = path.iter().map(String::as_str).collect();
        let page = format!("man/{}.1", gen_docs::page_name(&p));
        let shown = format!("berth {}", path.join(" ")).trim_end().to_string();
        if !repo().join(&page).exists() {
            problems.push(format!("`{shown}` has no man page {page}"));
        }
        if cmd
            .get_about()
            .map(|a| a.to_string())
            .unwrap_or_default()
            .trim()
            .is_empty()
        {
            problems.push(format!("`{shown}` has no about text (a /// comment)"));
        }
        for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
            let help = arg
                .get_help()
                .or(arg.get_long_help())
                .map(|h| h.to_string())
                .unwrap_or_default();
            if help.trim().is_empty() {
                problems.push(format!(
                    "`{shown}`: option {} has no help text (a /// comment)",
                    arg.get_id()
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{}\n{}",
        problems.join("\n"),
        regenerate_hint()
    );
}

/// Policy sections and keys, with each default as TOML text (`None` for a
/// key without a default value, such as bundles.cache).
fn policy_keys() -> BTreeMap<String, BTreeMap<String, Option<String>>> {
    let v = serde_json::to_value(berth::core::policy::Policy::default()).unwrap();
    let mut out: BTreeMap<String, BTreeMap<String, Option<String>>> = BTreeMap::new();
    for (section, body) in v.as_object().unwrap() {
        let keys = out.entry(section.clone()).or_default();
        match body {
            Value::Object(m) => {
                for (k, x) in m {
                    let shown =
                        (!x.is_null()).then(|| toml::Value::try_from(x).unwrap().to_string());
                    keys.insert(k.clone(), shown);
                }
            }
            // [[volumes]]: the keys of one entry; the list is empty by default.
            Value::Array(_) => {
                let sample =
                    berth::core::policy::Policy::parse("[[volumes]]\nroot = \"/x\"\n", "t")
                        .unwrap()
                        .volumes;
                let one = serde_json::to_value(&sample[0]).unwrap();
                for k in one.as_object().unwrap().keys() {
                    keys.insert(k.clone(), None);
                }
                keys.insert("mode".into(), Some("\"ro\"".into()));
            }
            _ => panic!("policy section {section} is neither a table nor a list"),
        }
    }
    out
}

/// roff text with the escapes this page uses undone.
fn unroff(s: &str) -> String {
    s.replace("\\fB", "")
        .replace("\\fR", "")
        .replace("\\fI", "")
        .replace("\\-", "-")
        .replace("\\(aq", "'")
        .replace("\\e", "\\")
}

/// The text of the `.SS "[section]"` (or `[[volumes]]`) of a man page, up
/// to the next .SS or .SH.
fn man_section(page: &str, section: &str) -> Option<String> {
    let heads = [format!("[{section}]"), format!("[[{section}]]")];
    let mut out = None;
    for line in page.lines() {
        if line.starts_with(".SS") || line.starts_with(".SH") {
            if out.is_some() {
                break;
            }
            if line.starts_with(".SS") && heads.iter().any(|h| line.contains(&format!("\"{h}\""))) {
                out = Some(String::new());
            }
            continue;
        }
        if let Some(o) = out.as_mut() {
            o.push_str(&unroff(line));
            o.push('\n');
        }
    }
    out
}

#[test]
fn policy_man_page_documents_every_key_with_its_default() {
    let page = read("man/berth-policy.5");
    let mut problems = Vec::new();
    let th = page.lines().find(|l| l.starts_with(".TH")).unwrap_or("");
    let version = format!("berth {}", env!("CARGO_PKG_VERSION"));
    if !th.contains(&version) {
        problems.push(format!("the .TH line should name \"{version}\": {th}"));
    }
    for (section, keys) in policy_keys() {
        let Some(text) = man_section(&page, &section) else {
            problems.push(format!("no .SS \"[{section}]\" section"));
            continue;
        };
        let lines: Vec<&str> = text.lines().collect();
        for (key, default) in keys {
            let ok = match &default {
                Some(d) => lines.iter().any(|l| l.trim() == format!("{key} = {d}")),
                None => lines.iter().any(|l| l.trim() == key),
            };
            if !ok {
                problems.push(format!(
                    "[{section}] {key}: add a `.TP` line `\\fB{key}\\fR{}` and its description",
                    default.map(|d| format!(" = {d}")).unwrap_or_default()
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "man/berth-policy.5 is out of date with src/core/policy.rs:\n{}",
        problems.join("\n")
    );
}

/// The lines of `## [section]` of a markdown page, up to the next `## `.
fn md_section(page: &str, section: &str) -> Option<String> {
    let heads = [format!("## `[{section}]`"), format!("## `[[{section}]]`")];
    let mut out: Option<String> = None;
    for line in page.lines() {
        if line.starts_with("## ") {
            if out.is_some() {
                break;
            }
            if heads.iter().any(|h| line.trim() == h) {
                out = Some(String::new());
            }
            continue;
        }
        if let Some(o) = out.as_mut() {
            o.push_str(line);
            o.push('\n');
        }
    }
    out
}

#[test]
fn policy_reference_documents_every_key_with_its_default() {
    let page = read("docs/policy.md");
    let mut problems = Vec::new();
    for (section, keys) in policy_keys() {
        let Some(text) = md_section(&page, &section) else {
            problems.push(format!("no heading \"## `[{section}]`\""));
            continue;
        };
        for (key, default) in keys {
            let row = text
                .lines()
                .find(|l| l.starts_with(&format!("| `{key}` |")));
            match (row, &default) {
                (None, _) => problems.push(format!(
                    "[{section}] {key}: add a table row starting \"| `{key}` |\""
                )),
                (Some(r), Some(d)) if !r.contains(&format!("`{d}`")) => problems.push(format!(
                    "[{section}] {key}: its row should show the default `{d}`"
                )),
                _ => {}
            }
        }
    }
    assert!(
        problems.is_empty(),
        "docs/policy.md is out of date with src/core/policy.rs:\n{}",
        problems.join("\n")
    );
}

#[test]
fn default_policy_file_shows_every_default() {
    let file: toml::Value = toml::from_str(&read("policy/default.toml")).unwrap();
    let mut problems = Vec::new();
    for (section, keys) in policy_keys() {
        if section == "volumes" {
            continue; // no roots by default; the file shows one commented out
        }
        for (key, default) in keys {
            let Some(d) = default else { continue };
            match file.get(&section).and_then(|s| s.get(&key)) {
                None => problems.push(format!("[{section}] {key} = {d} is missing")),
                Some(v) if v.to_string() != d => {
                    problems.push(format!("[{section}] {key} is {v}, but the default is {d}"))
                }
                _ => {}
            }
        }
    }
    assert!(
        problems.is_empty(),
        "policy/default.toml does not match Policy::default():\n{}",
        problems.join("\n")
    );
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn is_rule(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() >= 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
}

/// String literals in `s` that look like rule names.
fn rule_literals(s: &str) -> Vec<String> {
    s.split('"')
        .skip(1)
        .step_by(2)
        .filter(|l| is_rule(l))
        .map(str::to_string)
        .collect()
}

/// Every denial rule name in src/: the first argument of `Denial::new(` and
/// of the planner's `deny(`, either a literal or a `rule` variable whose
/// `let rule = …;` holds the literals.
fn denial_rules() -> (BTreeMap<String, String>, Vec<String>) {
    let mut files = Vec::new();
    rust_files(&repo().join("src"), &mut files);
    let mut rules = BTreeMap::new();
    let mut unknown = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let rel = f.strip_prefix(repo()).unwrap().display().to_string();
        for pat in ["Denial::new(", "deny("] {
            for (i, _) in text.match_indices(pat) {
                let before = text[..i].chars().next_back().unwrap_or(' ');
                if before.is_alphanumeric() || before == '_' {
                    continue;
                }
                let line = text[..i].lines().count();
                let rest = text[i + pat.len()..].trim_start();
                if let Some(lit) = rest.strip_prefix('"') {
                    let name = &lit[..lit.find('"').unwrap()];
                    if is_rule(name) {
                        rules.insert(name.to_string(), format!("{rel}:{line}"));
                    } else {
                        unknown.push(format!("{rel}:{line}: rule {name:?} is not section.key"));
                    }
                } else if rest.starts_with("rule") {
                    // The enclosing function either sets `let rule = …;` or
                    // takes `rule` as a parameter (a helper such as the
                    // planner's `deny`, whose callers are scanned).
                    let fn_at = text[..i].rfind("fn ").unwrap_or(0);
                    let body = &text[fn_at..i];
                    if let Some(at) = body.rfind("let rule") {
                        let end = at + body[at..].find(';').unwrap_or(body.len() - at);
                        for r in rule_literals(&body[at..end]) {
                            rules.insert(r, format!("{rel}:{line}"));
                        }
                    } else if !body[..body.find('{').unwrap_or(body.len())].contains("rule:") {
                        unknown.push(format!("{rel}:{line}: no `let rule` before this denial"));
                    }
                } else if !rest.starts_with(')') && !rest.starts_with('&') {
                    // Not a call with a rule (e.g. a definition); only the
                    // two forms above carry rule names.
                    if pat == "Denial::new(" {
                        unknown.push(format!(
                            "{rel}:{line}: name the rule with a string literal or a `let rule`"
                        ));
                    }
                }
            }
        }
    }
    (rules, unknown)
}

#[test]
fn troubleshooting_explains_every_denial_rule() {
    let (rules, unknown) = denial_rules();
    assert!(unknown.is_empty(), "{}", unknown.join("\n"));
    // The scan itself works: rules from each kind of call site.
    for r in [
        "volumes.source",
        "images.allow",
        "identity.min_uid",
        "docker.networks",
    ] {
        assert!(rules.contains_key(r), "rule scan missed {r}: {rules:?}");
    }
    let doc = read("docs/troubleshooting.md");
    let missing: Vec<String> = rules
        .iter()
        .filter(|(r, _)| !doc.lines().any(|l| l.trim() == format!("### `{r}`")))
        .map(|(r, at)| format!("{r} (emitted at {at})"))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/troubleshooting.md has no \"### `rule`\" section (message, cause, what to do) for:\n{}",
        missing.join("\n")
    );
}

#[test]
fn man_pages_render_without_warnings() {
    let mut pages: Vec<PathBuf> = std::fs::read_dir(repo().join("man"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    pages.sort();
    assert!(pages.iter().any(|p| p.ends_with("berth-policy.5")));
    for p in pages {
        let out = std::process::Command::new("groff")
            .args(["-man", "-ww", "-z", "-Tutf8"])
            .arg(&p)
            .output()
            .expect("groff (Debian package groff-base) renders man pages");
        assert!(out.status.success(), "{}", p.display());
        assert!(
            out.stderr.is_empty(),
            "{}: {}",
            p.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn doc_links_point_at_files_that_exist() {
    let mut pages = vec![repo().join("README.md")];
    for e in std::fs::read_dir(repo().join("docs")).unwrap() {
        pages.push(e.unwrap().path());
    }
    let mut broken = Vec::new();
    for page in pages
        .iter()
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
    {
        let text = std::fs::read_to_string(page).unwrap();
        for part in text.split("](").skip(1) {
            let target = part.split(')').next().unwrap_or("");
            let target = target.split('#').next().unwrap_or("");
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            if !page.parent().unwrap().join(target).exists() {
                broken.push(format!("{}: {target}", page.display()));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn policy_examples_in_the_docs_are_valid() {
    let mut pages = vec![repo().join("README.md")];
    for e in std::fs::read_dir(repo().join("docs")).unwrap() {
        pages.push(e.unwrap().path());
    }
    let mut seen = 0;
    for page in pages
        .iter()
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
    {
        let text = std::fs::read_to_string(page).unwrap();
        for block in text.split("```toml\n").skip(1) {
            let body = block.split("```").next().unwrap();
            if let Err(e) = berth::core::policy::Policy::parse(body, &page.display().to_string()) {
                panic!(
                    "a policy example in {} does not load: {e}\n{body}",
                    page.display()
                );
            }
            seen += 1;
        }
    }
    assert!(seen >= 1, "no ```toml policy examples found");
}

#[test]
fn broker_unit_keeps_the_host_mount_namespace() {
    // The broker bind-mounts pinned volumes that dockerd must see, and
    // creates per-job /tmp directories under /var/tmp/berth that dockerd
    // mounts: any option that gives the unit its own mount namespace (or a
    // device allow-list, which would block the job's terminal) breaks jobs.
    let unit = read("wrapper/systemd/berth.service");
    let settings: Vec<&str> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .collect();
    for bad in [
        "PrivateTmp",
        "PrivateDevices",
        "PrivateMounts",
        "PrivateUsers",
        "ProtectSystem",
        "ProtectHome",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "ProtectClock",
        "ProtectProc",
        "ReadWritePaths",
        "ReadOnlyPaths",
        "InaccessiblePaths",
        "TemporaryFileSystem",
        "BindPaths",
        "BindReadOnlyPaths",
        "MountFlags",
        "RootDirectory",
        "DeviceAllow",
        "DevicePolicy",
        "CapabilityBoundingSet",
        "DynamicUser",
        "User",
    ] {
        assert!(
            !settings.iter().any(|l| l.starts_with(&format!("{bad}="))),
            "berth.service must not set {bad}="
        );
    }
    for need in [
        "ExecStart=/usr/bin/berth daemon",
        "RuntimeDirectory=berth",
        "RuntimeDirectoryMode=0755",
        "NoNewPrivileges=yes",
    ] {
        assert!(settings.contains(&need), "berth.service lacks {need}");
    }
}
