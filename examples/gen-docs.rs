//! Generates berth's manual pages and shell completions from the clap
//! definitions in `src/cli.rs`. Not installed; run it after changing the
//! command line:
//!
//! ```sh
//! cargo run --example gen-docs -- .
//! ```
//!
//! writes `man/berth.1` and one `man/berth-<sub>[-<sub>…].1` per
//! subcommand, and `packaging/completions/{berth.bash,_berth,berth.fish}`
//! under the given directory (the repository root), and removes generated
//! pages of subcommands that no longer exist. `tests/docs.rs` fails when the
//! committed files differ from what this produces. The hand-written
//! `man/berth-policy.5` is never touched.

use clap::CommandFactory;
use clap_complete::Shell;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The command that regenerates every generated file (for messages).
pub const REGENERATE: &str = "cargo run --example gen-docs -- .";

/// Every generated file: its path relative to the repository root, and its
/// content.
pub fn files() -> Vec<(PathBuf, Vec<u8>)> {
    let mut cmd = berth::cli::Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut out = Vec::new();
    man_pages(&cmd, &[], &mut out);
    for (shell, name) in [
        (Shell::Bash, "berth.bash"),
        (Shell::Zsh, "_berth"),
        (Shell::Fish, "berth.fish"),
    ] {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut cmd.clone(), "berth", &mut buf);
        out.push((Path::new("packaging/completions").join(name), buf));
    }
    out
}

/// The page name of a command at `path` below `berth` (`berth-policy-check`).
pub fn page_name(path: &[&str]) -> String {
    std::iter::once("berth")
        .chain(path.iter().copied())
        .collect::<Vec<_>>()
        .join("-")
}

fn man_pages(cmd: &clap::Command, path: &[&str], out: &mut Vec<(PathBuf, Vec<u8>)>) {
    let name = page_name(path);
    let subs: Vec<&clap::Command> = cmd.get_subcommands().filter(|s| !s.is_hide_set()).collect();
    let man = clap_mangen::Man::new(cmd.clone())
        .title(name.to_uppercase())
        .source(format!("berth {}", env!("CARGO_PKG_VERSION")))
        .manual("berth manual");
    let mut buf = Vec::new();
    man.render(&mut buf)
        .expect("rendering to memory cannot fail");

    // FILES, EXIT STATUS (top page) and SEE ALSO, which clap cannot know.
    let mut see: Vec<String> = Vec::new();
    if !path.is_empty() {
        see.push(format!("{}(1)", page_name(&path[..path.len() - 1])));
    }
    for s in &subs {
        let mut p = path.to_vec();
        p.push(s.get_name());
        see.push(format!("{}(1)", page_name(&p)));
    }
    see.push("berth-policy(5)".into());
    if path.is_empty() {
        writeln!(
            buf,
            ".SH \"EXIT STATUS\"\n\
             .TP\n\\fIthe container's code\\fR\nthe container ran; its exit code is the job's\n\
             .TP\n\\fB64\\fR\nthe request is malformed (bad syntax in a variable, unknown option)\n\
             .TP\n\\fB69\\fR\nthe docker engine or the broker is not reachable; safe to requeue\n\
             .TP\n\\fB70\\fR\ninternal error\n\
             .TP\n\\fB77\\fR\nthe request is denied by policy\n\
             .TP\n\\fB78\\fR\nthe policy file or the installation is invalid or unsafe"
        )
        .unwrap();
    }
    writeln!(
        buf,
        ".SH FILES\n\
         .TP\n\\fI/etc/berth/policy.toml\\fR\n\
         the site policy (root-owned, not writable by group or others); see \\fBberth-policy\\fR(5)\n\
         .TP\n\\fI/usr/share/doc/berth/\\fR\n\
         installation guides for LSF and Slurm, the policy reference and the troubleshooting guide\n\
         .SH \"SEE ALSO\"\n{}",
        see.iter()
            .map(|s| {
                let (n, sec) = s.trim_end_matches(')').split_once('(').unwrap();
                format!("\\fB{n}\\fR({sec})")
            })
            .collect::<Vec<_>>()
            .join(",\n")
    )
    .unwrap();
    out.push((Path::new("man").join(format!("{name}.1")), buf));

    for s in subs {
        let mut p = path.to_vec();
        p.push(s.get_name());
        man_pages(s, &p, out);
    }
}

/// Write every generated file under `root` and remove generated pages
/// (`man/berth*.1`) that are no longer produced.
pub fn write_all(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let files = files();
    let man = root.join("man");
    if let Ok(rd) = std::fs::read_dir(&man) {
        for e in rd {
            let p = e?.path();
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let generated = files.iter().any(|(f, _)| root.join(f) == p);
            if n.starts_with("berth") && n.ends_with(".1") && !generated {
                std::fs::remove_file(&p)?;
            }
        }
    }
    let mut written = Vec::new();
    for (rel, content) in files {
        let p = root.join(&rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d)?;
        }
        std::fs::write(&p, content)?;
        written.push(rel);
    }
    Ok(written)
}

#[allow(dead_code)]
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [root] = args.as_slice() else {
        eprintln!("usage: cargo run --example gen-docs -- <repository root>   (usually .)");
        std::process::exit(64);
    };
    match write_all(Path::new(root)) {
        Ok(w) => {
            for f in w {
                println!("{}", Path::new(root).join(f).display());
            }
        }
        Err(e) => {
            eprintln!("gen-docs: {e}");
            std::process::exit(1);
        }
    }
}
