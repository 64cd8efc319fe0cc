//! `berth lsf esub`: the submission hook behind `bsub -a 'docker(IMAGE)'`.
//!
//! LSF runs `$LSF_SERVERDIR/esub.docker` as the submitting user, on the
//! submission host, with the image as its argument and:
//!
//! * `LSB_SUB_PARM_FILE`: the job's options, one `LSB_SUB_<OPTION>=value`
//!   per line, values double-quoted with `\"` and `\\` escaped (the file is
//!   meant to be sourced by `/bin/sh`);
//! * `LSB_SUB_MODIFY_ENVFILE`: where to write `NAME="value"` lines that set
//!   variables in the job's environment;
//! * `LSB_SUB_MODIFY_FILE`: where to write changed job options;
//! * `LSB_SUB_ABORT_VALUE`: the exit code that rejects the job (then nothing
//!   may be written to the modify files); messages for the user go to stderr.
//!
//! The checklist: parse the parameter file → pick the image → load the
//! policy → the submitting user (real uid, never a variable) → the request
//! from the submission environment → the planner with this host's
//! filesystem and no image facts → write, or reject.

use crate::cli::EsubArgs;
use crate::core::error::{Error, Result};
use crate::core::identity;
use crate::core::plan::{self, Context};
use crate::core::policy::Policy;
use crate::core::request;
use crate::sys::nss::Nss;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// Largest parameter file read (LSF writes a few kilobytes).
const MAX_PARM_FILE: u64 = 1 << 20;

/// Parse an esub parameter file: `NAME=WORD` lines where WORD follows the
/// quoting of `/bin/sh` (the file is made to be sourced): `"…"` with `\"`,
/// `\\`, `\$`, `` \` `` and backslash-newline escaped, `'…'` verbatim, and
/// bare characters with `\` quoting the next one; quoted parts may span
/// lines and concatenate. Nothing is expanded. Blank lines and `#` comments
/// are skipped; any other line is an error naming its number. A repeated
/// name keeps its last value, as the shell would.
pub fn parse_parm_file(text: &str) -> std::result::Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    let mut line = 1;
    while i < chars.len() {
        // Skip leading blanks, blank lines and comments.
        match chars[i] {
            ' ' | '\t' | '\r' => {
                i += 1;
                continue;
            }
            '\n' => {
                line += 1;
                i += 1;
                continue;
            }
            '#' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
                continue;
            }
            _ => {}
        }
        let start_line = line;
        let name_start = i;
        while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
            i += 1;
        }
        let name: String = chars[name_start..i].iter().collect();
        if name.is_empty()
            || name.as_bytes()[0].is_ascii_digit()
            || i >= chars.len()
            || chars[i] != '='
        {
            let shown: String = chars[name_start..]
                .iter()
                .take_while(|c| **c != '\n')
                .take(60)
                .collect();
            return Err(format!("line {start_line}: {shown:?} is not NAME=value"));
        }
        i += 1;
        let mut value = String::new();
        // One shell word: runs of bare, '…' and "…" parts up to a blank.
        while i < chars.len() && !matches!(chars[i], ' ' | '\t' | '\n' | '\r') {
            match chars[i] {
                '"' => {
                    i += 1;
                    loop {
                        let Some(&c) = chars.get(i) else {
                            return Err(format!(
                                "line {start_line}: {name} has an unterminated \"…\" value"
                            ));
                        };
                        i += 1;
                        match c {
                            '"' => break,
                            '\\' => match chars.get(i) {
                                Some(&n @ ('"' | '\\' | '$' | '`')) => {
                                    value.push(n);
                                    i += 1;
                                }
                                Some('\n') => {
                                    line += 1;
                                    i += 1;
                                }
                                _ => value.push('\\'),
                            },
                            '\n' => {
                                line += 1;
                                value.push('\n');
                            }
                            c => value.push(c),
                        }
                    }
                }
                '\'' => {
                    i += 1;
                    loop {
                        let Some(&c) = chars.get(i) else {
                            return Err(format!(
                                "line {start_line}: {name} has an unterminated '…' value"
                            ));
                        };
                        i += 1;
                        if c == '\'' {
                            break;
                        }
                        if c == '\n' {
                            line += 1;
                        }
                        value.push(c);
                    }
                }
                '\\' => {
                    i += 1;
                    match chars.get(i) {
                        Some('\n') => {
                            line += 1;
                            i += 1;
                        }
                        Some(&c) => {
                            value.push(c);
                            i += 1;
                        }
                        None => {}
                    }
                }
                c => {
                    value.push(c);
                    i += 1;
                }
            }
        }
        // After the word: blanks, then the end of the line or a comment.
        while i < chars.len() && matches!(chars[i], ' ' | '\t' | '\r') {
            i += 1;
        }
        if i < chars.len() && chars[i] != '\n' && chars[i] != '#' {
            return Err(format!(
                "line {line}: unexpected text after the value of {name}"
            ));
        }
        out.insert(name, value);
    }
    Ok(out)
}

/// Quote a value for an esub output file: `"…"` with `\` and `"` escaped.
pub fn quote_value(v: &str) -> String {
    let mut s = String::with_capacity(v.len() + 2);
    s.push('"');
    for c in v.chars() {
        if c == '"' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('"');
    s
}

/// The arguments of the `docker(…)` item of an `-a` string such as
/// `docker(alpine) license(x,y)`; `Some(vec![])` for a bare `docker`,
/// `None` when there is no docker item.
pub fn docker_args(additional: &str) -> Option<Vec<String>> {
    let s = additional.trim();
    let mut i = 0;
    let b = s.as_bytes();
    while i < b.len() {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'-') {
            i += 1;
        }
        let name = &s[start..i];
        let mut args = None;
        if i < b.len() && b[i] == b'(' {
            let open = i + 1;
            let mut depth = 1;
            i += 1;
            while i < b.len() && depth > 0 {
                match b[i] {
                    b'(' => depth += 1,
                    b')' => depth -= 1,
                    _ => {}
                }
                i += 1;
            }
            let close = if depth == 0 { i - 1 } else { i };
            args = Some(&s[open..close]);
        }
        if name == "docker" {
            return Some(match args {
                None => Vec::new(),
                Some(a) if a.trim().is_empty() => Vec::new(),
                Some(a) => a.split(',').map(|x| x.trim().to_string()).collect(),
            });
        }
        if i == start {
            // Not a name: skip one character (all of its bytes, so later
            // slices stay on character boundaries) so the scan moves on.
            i += s[i..].chars().next().map_or(1, char::len_utf8);
        }
    }
    None
}

/// The image the submission asks for: the esub's argument (`alpine`, or a
/// whole `docker(alpine)`), else the `docker(…)` item of
/// `LSB_SUB_ADDITIONAL`, else `LSB_CONTAINER_IMAGE` from the environment.
pub fn pick_image(
    argv: &[String],
    additional: Option<&str>,
    env_image: Option<&str>,
) -> Result<String> {
    let mut from_args: Vec<String> = Vec::new();
    for a in argv {
        match docker_args(a).filter(|_| a.trim_start().starts_with("docker(")) {
            Some(inner) => from_args.extend(inner),
            None => from_args.extend(a.split(',').map(|x| x.trim().to_string())),
        }
    }
    from_args.retain(|a| !a.is_empty());
    let args = if from_args.is_empty() {
        additional.and_then(docker_args).unwrap_or_default()
    } else {
        from_args
    };
    match args.as_slice() {
        [one] => Ok(one.clone()),
        [] => match env_image.map(str::trim).filter(|v| !v.is_empty()) {
            Some(v) => Ok(v.to_string()),
            None => Err(Error::Malformed(
                "no image: submit with bsub -a 'docker(IMAGE)' (or docker(bundle:NAME))".into(),
            )),
        },
        more => Err(Error::Malformed(format!(
            "docker({}) names {} images; give exactly one, e.g. -a 'docker(alpine)'",
            more.join(","),
            more.len()
        ))),
    }
}

/// What an accepted submission writes: `(file, lines)` pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub env_lines: Vec<String>,
    pub option_lines: Vec<String>,
}

/// Decide a submission: everything but reading and writing LSF's files.
pub fn decide(
    policy: &Policy,
    caller_uid: u32,
    args: &EsubArgs,
    parm: &BTreeMap<String, String>,
    mut env: BTreeMap<String, String>,
    cwd: Option<std::path::PathBuf>,
) -> Result<Accepted> {
    let additional = parm
        .get("LSB_SUB_ADDITIONAL")
        .or_else(|| env.get("LSB_SUB_ADDITIONAL"))
        .map(String::as_str);
    let image = pick_image(
        &args.args,
        additional,
        env.get("LSB_CONTAINER_IMAGE").map(String::as_str),
    )?;
    // The submitting user: the real uid, never LSFUSER or another variable.
    let id = identity::resolve(&Nss, policy, caller_uid, None)?;

    // The request as the job will make it on the execution host. The job
    // id is not known yet; the command is the one LSF recorded (when
    // LSB_SUB_COMMANDNAME=y), so LSB_DOCKER_PLACE_HOLDER is recognised.
    env.insert("LSB_CONTAINER_IMAGE".into(), image.clone());
    env.remove("LSB_JOBID");
    env.remove("LSB_JOBINDEX");
    env.remove("LSB_JOBFILENAME");
    let command = parm
        .get("LSB_SUB_COMMAND_LINE")
        .filter(|c| !c.trim().is_empty())
        .cloned()
        .unwrap_or_else(|| "true".into());
    let req = request::from_env(&env, cwd, vec![command])?;
    plan::check_image(policy, &req)?;
    let ctx = Context {
        env_file_vars: crate::sys::userfs::read_env_files(&id, &req)?,
        nonce: "0".into(),
        ..Default::default()
    };
    // Volumes, workdir, network, ports, raw args, env: the planner's own
    // rules, with this host's filesystem seen as the user and no image
    // facts (the image may not be on this host; the node checks those).
    let _ = plan::plan(
        policy,
        &id,
        &req,
        None,
        &crate::sys::userfs::RealFs::default(),
        &ctx,
    )?;

    let mut option_lines = Vec::new();
    if let Some(app) = &args.app {
        if !parm.contains_key("LSB_SUB_APP_NAME") {
            option_lines.push(format!("LSB_SUB_APP_NAME={}", quote_value(app)));
        }
    }
    Ok(Accepted {
        env_lines: vec![format!("LSB_CONTAINER_IMAGE={}", quote_value(&image))],
        option_lines,
    })
}

/// The esub entry point; returns the process exit code.
pub fn run(policy_path: &Path, args: &EsubArgs) -> i32 {
    match run_inner(policy_path, args) {
        Ok(()) => 0,
        Err(e) => reject(&e),
    }
}

/// Reject the submission: one line on stderr, and the exit code that makes
/// LSF refuse the job (`LSB_SUB_ABORT_VALUE`; LSF accepts a job whose esub
/// exits with anything else), or berth's own code when LSF did not set it.
/// Every failure of the esub ends here.
pub fn reject(e: &Error) -> i32 {
    eprintln!("berth: job rejected: {e}");
    std::env::var("LSB_SUB_ABORT_VALUE")
        .ok()
        .and_then(|v| v.trim().parse::<i32>().ok())
        .unwrap_or_else(|| e.exit_code())
}

/// Whether a command line runs `berth lsf esub`, judged without clap, so
/// that a line clap refuses is still known to be the esub's. Options
/// before the subcommand words are skipped (`--policy` with its value).
pub fn is_esub_command_line(args: &[std::ffi::OsString]) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let mut words: Vec<&[u8]> = Vec::new();
    let mut it = args.iter().skip(1).map(|a| a.as_bytes());
    while let Some(a) = it.next() {
        match a {
            b"--" => break,
            b"--policy" => {
                it.next();
            }
            _ if a.starts_with(b"-") => {}
            _ => {
                words.push(a);
                if words.len() == 2 {
                    break;
                }
            }
        }
    }
    words == [b"lsf".as_slice(), b"esub".as_slice()]
}

/// A `berth lsf esub` command line clap refuses (an unknown option, a
/// missing value): the submission is rejected like any other failure, not
/// left to clap's exit 2, which LSF would take as "accept". `--help` and
/// `--version` print and exit 0 only when LSF is not the caller: run by
/// LSF, they would accept a job nothing checked. Returns the exit code.
pub fn usage_error(e: &clap::Error) -> i32 {
    use clap::error::ErrorKind;
    let informational = matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion);
    let by_lsf = std::env::var_os("LSB_SUB_ABORT_VALUE").is_some();
    if informational && !by_lsf {
        let _ = e.print();
        return e.exit_code();
    }
    let what = if informational {
        "asks for help or the version, which checks no submission".to_string()
    } else {
        let text = e.render().to_string();
        let first = text.lines().next().unwrap_or_default();
        format!(
            "does not parse ({})",
            first.strip_prefix("error: ").unwrap_or(first)
        )
    };
    reject(&Error::Malformed(format!(
        "the esub command line {what}; fix esub.docker (it runs berth --policy FILE lsf esub [--app NAME] -- \"$@\")"
    )))
}

fn run_inner(policy_path: &Path, args: &EsubArgs) -> Result<()> {
    if let Some(app) = &args.app {
        let ok = !app.is_empty()
            && app.len() <= 64
            && app
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok {
            return Err(Error::Config(format!(
                "--app {app:?} is not an application profile name; fix esub.docker"
            )));
        }
    }
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    let Some(parm_path) = var("LSB_SUB_PARM_FILE") else {
        return Err(Error::Config(
            "LSB_SUB_PARM_FILE is not set: berth lsf esub is run by LSF at submission (install wrapper/lsf/esub.docker)".into(),
        ));
    };
    let Some(env_file) = var("LSB_SUB_MODIFY_ENVFILE") else {
        return Err(Error::Config(
            "LSB_SUB_MODIFY_ENVFILE is not set: berth lsf esub is run by LSF at submission".into(),
        ));
    };
    let parm_text = read_small(Path::new(&parm_path))?;
    let parm = parse_parm_file(&parm_text).map_err(|e| {
        Error::Malformed(format!(
            "esub parameter file {}: {e}",
            Path::new(&parm_path).display()
        ))
    })?;
    let policy = Policy::load(policy_path)?;
    let env = crate::sys::environment()?;
    let cwd = std::env::current_dir().ok();
    let accepted = decide(&policy, crate::sys::real_uid(), args, &parm, env, cwd)?;

    let option_file = var("LSB_SUB_MODIFY_FILE");
    if !accepted.option_lines.is_empty() && option_file.is_none() {
        return Err(Error::Config(
            "LSB_SUB_MODIFY_FILE is not set, so --app cannot choose the application profile".into(),
        ));
    }
    // Open every file before writing any, so a file that cannot be opened
    // rejects the job with nothing written (and none of them created).
    let mut writes = vec![(open_append(Path::new(&env_file))?, &accepted.env_lines)];
    if let Some(f) = option_file.filter(|_| !accepted.option_lines.is_empty()) {
        match open_append(Path::new(&f)) {
            Ok(o) => writes.push((o, &accepted.option_lines)),
            Err(e) => {
                for ((_, path, created), _) in &writes {
                    if *created {
                        let _ = std::fs::remove_file(path);
                    }
                }
                return Err(e);
            }
        }
    }
    for ((mut file, path, _), lines) in writes {
        // One write per file, so other esubs' lines stay whole.
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        file.write_all(text.as_bytes())
            .map_err(|e| Error::Config(format!("cannot write {}: {e}", path.display())))?;
    }
    Ok(())
}

fn read_small(path: &Path) -> Result<String> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| {
        Error::Config(format!(
            "cannot read esub parameter file {}: {e}",
            path.display()
        ))
    })?;
    let mut buf = Vec::new();
    f.take(MAX_PARM_FILE + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
    if buf.len() as u64 > MAX_PARM_FILE {
        return Err(Error::Malformed(format!(
            "esub parameter file {} is larger than {MAX_PARM_FILE} bytes",
            path.display()
        )));
    }
    String::from_utf8(buf).map_err(|_| {
        Error::Malformed(format!(
            "esub parameter file {} is not UTF-8",
            path.display()
        ))
    })
}

/// An esub output file, opened for appending (other esubs write to it
/// too); whether this call created it.
fn open_append(path: &Path) -> Result<(std::fs::File, std::path::PathBuf, bool)> {
    let open = |create_new: bool| {
        std::fs::OpenOptions::new()
            .append(true)
            .create_new(create_new)
            .open(path)
    };
    let r = match open(true) {
        Ok(f) => Ok((f, true)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => open(false).map(|f| (f, false)),
        Err(e) => Err(e),
    };
    r.map(|(f, created)| (f, path.to_path_buf(), created))
        .map_err(|e| Error::Config(format!("cannot write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> BTreeMap<String, String> {
        parse_parm_file(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    #[test]
    fn parameter_file_quoting() {
        // (file text, name, value)
        let table: &[(&str, &str, &str)] = &[
            ("A=\"x\"\n", "A", "x"),
            ("A=\"\"\n", "A", ""),
            ("A=\n", "A", ""),
            ("A=bare\n", "A", "bare"),
            ("A=\"two words\"\n", "A", "two words"),
            (r#"A="say \"hi\" now""#, "A", r#"say "hi" now"#),
            (r#"A="back\\slash""#, "A", r"back\slash"),
            (r#"A="ends with \\""#, "A", r"ends with \"),
            (r#"A="\\\"""#, "A", r#"\""#),
            (
                r#"A="dollar \$HOME and `tick` \`""#,
                "A",
                "dollar $HOME and `tick` `",
            ),
            (r#"A="$HOME stays""#, "A", "$HOME stays"),
            (r#"A="keep \n and \t""#, "A", r"keep \n and \t"),
            ("A=\"multi\nline\"\n", "A", "multi\nline"),
            ("A=\"joined\\\nline\"\n", "A", "joinedline"),
            ("A='single \"q\" \\ kept'\n", "A", "single \"q\" \\ kept"),
            ("A=\"con\"'cat'enated\n", "A", "concatenated"),
            (r"A=esc\ aped", "A", "esc aped"),
            ("A=\"x\"   \n", "A", "x"),
            ("A=\"x\" # a comment\n", "A", "x"),
            ("A=\"x\"\r\n", "A", "x"),
            ("A=\"first\"\nA=\"second\"\n", "A", "second"),
            ("\n# comment\n\n  A=\"x\"\n", "A", "x"),
            ("A=\"docker(alpine)\"\n", "A", "docker(alpine)"),
            ("A=\"a=b=c\"\n", "A", "a=b=c"),
            ("A=\"ünïcödé\"\n", "A", "ünïcödé"),
        ];
        for (text, name, want) in table {
            let m = parse(text);
            assert_eq!(m.get(*name).map(String::as_str), Some(*want), "{text:?}");
        }
    }

    #[test]
    fn parameter_file_with_many_options() {
        let text = "LSB_SUB_QUEUE=\"normal\"\nLSB_SUB_NUM_PROCESSORS=4\n\
                    LSB_SUB_COMMAND_LINE=\"python -c \\\"print('a b')\\\"\"\n\
                    LSB_SUB_ADDITIONAL=\"docker(alpine)\"\nLSB_SUB_JOB_NAME=\"x\"\n";
        let m = parse(text);
        assert_eq!(m["LSB_SUB_QUEUE"], "normal");
        assert_eq!(m["LSB_SUB_NUM_PROCESSORS"], "4");
        assert_eq!(m["LSB_SUB_COMMAND_LINE"], "python -c \"print('a b')\"");
        assert_eq!(m["LSB_SUB_ADDITIONAL"], "docker(alpine)");
        assert_eq!(m.len(), 5);
    }

    #[test]
    fn malformed_parameter_files() {
        for bad in [
            "A=\"unterminated\n",
            "A='unterminated\n",
            "A=\"x\" trailing\n",
            "A=x y\n",
            "not a line\n",
            "=\"x\"\n",
            "1A=\"x\"\n",
            "A-B=\"x\"\n",
            "export A\n",
        ] {
            assert!(parse_parm_file(bad).is_err(), "{bad:?}");
        }
        let e = parse_parm_file("A=1\nB=2\nbad line\n").unwrap_err();
        assert!(e.starts_with("line 3:"), "{e}");
        let e = parse_parm_file("A=\"x\ny\"\nbad\n").unwrap_err();
        assert!(e.starts_with("line 3:"), "{e}");
    }

    #[test]
    fn output_quoting_round_trips() {
        for v in ["alpine", "a\"b", "a\\b", "\\\"", "", "x y", "$HOME"] {
            let line = format!("A={}\n", quote_value(v));
            assert_eq!(parse(&line)["A"], v, "{line:?}");
        }
        assert_eq!(quote_value(r#"a"b\c"#), r#""a\"b\\c""#);
    }

    #[test]
    fn docker_items_of_additional() {
        let d = |s: &str| docker_args(s);
        assert_eq!(d("docker(alpine)"), Some(vec!["alpine".into()]));
        assert_eq!(
            d("license(x,y) docker(bundle:pt2) fluent"),
            Some(vec!["bundle:pt2".into()])
        );
        assert_eq!(d("docker"), Some(vec![]));
        assert_eq!(d("docker()"), Some(vec![]));
        assert_eq!(d("docker(a, b)"), Some(vec!["a".into(), "b".into()]));
        assert_eq!(d("dockerx(alpine)"), None);
        assert_eq!(d("nvdocker(alpine)"), None);
        assert_eq!(d("license(docker(x))"), None);
        assert_eq!(d(""), None);
        // Found by fuzzing: a multi-byte character outside any item used
        // to be skipped one byte at a time, panicking on a slice.
        assert_eq!(d("ޘ docker(alpine) é"), Some(vec!["alpine".into()]));
        assert_eq!(d("'ޘl='x"), None);
        assert_eq!(
            d("docker(registry.example.edu:5000/lab/img:1.0@sha256:00)"),
            Some(vec![
                "registry.example.edu:5000/lab/img:1.0@sha256:00".into()
            ])
        );
    }

    #[test]
    fn esub_command_lines() {
        let line = |s: &str| {
            let args: Vec<std::ffi::OsString> = s.split(' ').map(Into::into).collect();
            is_esub_command_line(&args)
        };
        for yes in [
            "berth lsf esub",
            "berth lsf esub --bogus",
            "berth --policy /p lsf esub -- x",
            "berth --policy=/p lsf esub",
            "berth lsf --policy /p esub --app",
            "berth -x lsf esub",
        ] {
            assert!(line(yes), "{yes}");
        }
        for no in [
            "berth",
            "berth lsf",
            "berth lsf control esub",
            "berth run lsf esub",
            "berth --policy lsf esub",
            "berth -- lsf esub",
            "berth lsf esubx",
        ] {
            assert!(!line(no), "{no}");
        }
    }

    #[test]
    fn image_choice() {
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(pick_image(&a(&["alpine"]), None, None).unwrap(), "alpine");
        assert_eq!(
            pick_image(&a(&["docker(alpine)"]), None, None).unwrap(),
            "alpine"
        );
        assert_eq!(
            pick_image(&a(&["bundle:pt2"]), Some("docker(other)"), None).unwrap(),
            "bundle:pt2"
        );
        assert_eq!(
            pick_image(&[], Some("docker(bundle:pt2)"), Some("x")).unwrap(),
            "bundle:pt2"
        );
        assert_eq!(
            pick_image(&[], Some("docker"), Some("ubuntu")).unwrap(),
            "ubuntu"
        );
        assert_eq!(
            pick_image(&a(&[""]), None, Some("ubuntu")).unwrap(),
            "ubuntu"
        );
        // The official image named "docker" is an image, not the esub name.
        assert_eq!(pick_image(&a(&["docker"]), None, None).unwrap(), "docker");
        for (argv, add, env) in [
            (a(&[]), None, None),
            (a(&[]), Some("docker"), Some(" ")),
            (a(&["a", "b"]), None, None),
            (a(&["a,b"]), None, None),
            (a(&[]), Some("docker(a,b)"), None),
        ] {
            assert!(
                matches!(pick_image(&argv, add, env), Err(Error::Malformed(_))),
                "{argv:?} {add:?} {env:?}"
            );
        }
    }
}
