//! `berth doctor` against the real engine of the test bed (run as root by
//! tests/run.sh).

use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn berth(bin: &Path, policy: &Path, args: &[&str]) -> Run {
    // A freshly copied binary can be briefly busy (ETXTBSY) while another
    // test thread's fork still holds the copy's write descriptor.
    let mut tries = 0;
    let out = loop {
        match Command::new(bin)
            .arg("--policy")
            .arg(policy)
            .args(args)
            .env_remove("LSF_SERVERDIR")
            .output()
        {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 100 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => break r.expect("run berth"),
        }
    };
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

/// A root-owned directory holding `policy.toml` (plus whatever the test adds).
fn site(policy: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    // Searchable by others, like /run/berth must be for the broker socket.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let p = dir.path().join("policy.toml");
    let text = policy.replace("@DIR@", &dir.path().display().to_string());
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    (dir, p)
}

const GOOD: &str = r#"
[images]
allow = ["berth-test/*"]
[[volumes]]
root = "/storage1/fs1"
mode = "rw"
[audit]
log = "@DIR@/audit.log"
[broker]
socket = "@DIR@/berth.sock"
"#;

fn json(r: &Run) -> Value {
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor --json printed no JSON ({e}): {}{}",
            r.stdout, r.stderr
        )
    })
}

fn status<'a>(v: &'a Value, name: &str) -> &'a str {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name}: {v:#}"))["status"]
        .as_str()
        .unwrap()
}

fn message(v: &Value, name: &str) -> String {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"] == name)
        .map(|c| c["message"].as_str().unwrap().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether the engine's runc is older than 1.1.12, asked independently of
/// doctor.
fn engine_runc_is_old() -> bool {
    let v = berth::engine::Engine::new(Path::new("/var/run/docker.sock"))
        .version()
        .expect("the test bed's engine answers");
    let runc = v["Components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["Name"] == "runc")
        .expect("engine reports runc")["Version"]
        .as_str()
        .unwrap()
        .to_string();
    berth::engine::check::parse_version(&runc).expect("runc version parses")
        < berth::app::doctor::PATCHED_RUNC
}

#[test]
fn a_healthy_node_passes_with_the_engine_and_runc_checked() {
    let (_d, p) = site(GOOD);
    let r = berth(Path::new(BERTH), &p, &["doctor", "--json"]);
    let v = json(&r);
    assert_eq!(r.code, 0, "{v:#}");
    assert_eq!(v["ok"], true);
    for name in [
        "binary",
        "policy.file",
        "policy.valid",
        "docker.client",
        "docker.engine",
        "docker.init",
        "tmp",
        "audit",
    ] {
        assert_eq!(status(&v, name), "ok", "{name}: {v:#}");
    }
    assert!(message(&v, "docker.engine").contains("API 1."), "{v:#}");
    assert!(message(&v, "docker.client").contains("Docker version"));
    // Debian 12's runc is 1.1.5: a warning by default, not a failure.
    let runc = status(&v, "runc");
    if engine_runc_is_old() {
        assert_eq!(runc, "warn", "{v:#}");
        assert!(message(&v, "runc").contains("CVE-2024-21626"));
    } else {
        assert_eq!(runc, "ok", "{v:#}");
    }
    // No broker listens on this policy's socket: a warning that says how.
    assert_eq!(status(&v, "broker"), "warn", "{v:#}");
    assert!(message(&v, "broker").contains("berth daemon"));
    // Built in the repository (target/<profile>/berth): the glue is the
    // repository's wrapper/. With a target directory elsewhere there is no
    // glue to find unless the package is installed.
    let in_repo = Path::new(BERTH)
        .ancestors()
        .nth(3)
        .is_some_and(|r| r.join("wrapper").is_dir() && r.join("Cargo.toml").is_file());
    if in_repo {
        assert_eq!(status(&v, "glue"), "ok", "{v:#}");
        assert!(message(&v, "glue").contains("wrapper"), "{v:#}");
    } else if !Path::new(berth::app::doctor::GLUE_DIR).is_dir() {
        assert_eq!(status(&v, "glue"), "warn", "{v:#}");
    }
}

#[test]
fn text_output_is_one_line_per_check_and_a_summary() {
    let (_d, p) = site(GOOD);
    let r = berth(Path::new(BERTH), &p, &["doctor"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    let (last, checks) = lines.split_last().unwrap();
    assert!(checks.len() >= 10, "{}", r.stdout);
    for l in checks {
        assert!(
            l.starts_with("ok ") || l.starts_with("warn ") || l.starts_with("fail "),
            "{l}"
        );
    }
    assert!(
        last.starts_with("berth doctor: ") && last.ends_with(" 0 failures"),
        "{last}"
    );
    assert!(r.stdout.contains("docker.engine"));
}

#[test]
fn old_runc_fails_when_the_policy_asks() {
    let (_d, p) = site(&format!("{GOOD}\n[docker]\nold_runc = \"fail\"\n"));
    let r = berth(Path::new(BERTH), &p, &["doctor", "--json"]);
    let v = json(&r);
    if engine_runc_is_old() {
        assert_eq!(r.code, 78, "{v:#}");
        assert_eq!(status(&v, "runc"), "fail");
        assert_eq!(v["ok"], false);
    } else {
        assert_eq!(r.code, 0, "{v:#}");
    }
}

#[test]
fn an_unsafe_policy_file_fails_and_the_other_checks_still_run() {
    let (_d, p) = site(GOOD);
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
    let r = berth(Path::new(BERTH), &p, &["doctor", "--json"]);
    let v = json(&r);
    assert_eq!(r.code, 78);
    assert_eq!(status(&v, "policy.file"), "fail");
    assert!(message(&v, "policy.file").contains("chmod go-w"), "{v:#}");
    assert_eq!(status(&v, "docker.engine"), "ok");
}

#[test]
fn an_invalid_policy_fails() {
    let (_d, p) = site("[identity]\nmin_uidd = 5\n");
    let r = berth(Path::new(BERTH), &p, &["doctor", "--json"]);
    let v = json(&r);
    assert_eq!(r.code, 78);
    assert_eq!(status(&v, "policy.valid"), "fail");
    assert!(message(&v, "policy.valid").contains("min_uidd"), "{v:#}");
}

#[test]
fn policy_warnings_are_reported() {
    let (_d, p) = site("[images]\nallow = [\"*\"]\n");
    let r = berth(Path::new(BERTH), &p, &["doctor", "--json"]);
    let v = json(&r);
    assert_eq!(status(&v, "policy.lint"), "warn", "{v:#}");
    assert!(message(&v, "policy.lint").contains("every image"));
}

#[test]
fn an_unreachable_engine_fails() {
    let (_d, p) = site(&format!(
        "{GOOD}\n[docker]\nsocket = \"@DIR@/no-docker.sock\"\n"
    ));
    let r = berth(Path::new(BERTH), &p, &["doctor", "--json"]);
    let v = json(&r);
    assert_eq!(r.code, 78);
    assert_eq!(status(&v, "docker.engine"), "fail");
    assert!(message(&v, "docker.engine").contains("no-docker.sock"));
}

#[test]
fn writable_directories_fail() {
    let (d, p) = site(&format!(
        "{GOOD}\n[tmp]\nbase = \"@DIR@/tmpbase\"\n[bundles]\ncache = \"@DIR@/bundles\"\nlock_dir = \"@DIR@/locks\"\n"
    ));
    for (sub, mode) in [("tmpbase", 0o777), ("bundles", 0o775), ("locks", 0o757)] {
        let s = d.path().join(sub);
        std::fs::create_dir(&s).unwrap();
        std::fs::set_permissions(&s, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let r = berth(Path::new(BERTH), &p, &["doctor", "--json"]);
    let v = json(&r);
    assert_eq!(r.code, 78);
    for name in ["tmp", "bundles", "lock_dir"] {
        assert_eq!(status(&v, name), "fail", "{name}: {v:#}");
        assert!(message(&v, name).contains("writable"), "{v:#}");
    }
    // Fixed, they pass.
    for sub in ["tmpbase", "bundles", "locks"] {
        std::fs::set_permissions(d.path().join(sub), std::fs::Permissions::from_mode(0o711))
            .unwrap();
    }
    let v = json(&berth(Path::new(BERTH), &p, &["doctor", "--json"]));
    for name in ["tmp", "bundles", "lock_dir"] {
        assert_eq!(status(&v, name), "ok", "{name}: {v:#}");
    }
}

#[test]
fn a_bundle_cache_owned_by_a_user_fails() {
    let (d, p) = site(&format!("{GOOD}\n[bundles]\ncache = \"@DIR@/bundles\"\n"));
    let s = d.path().join("bundles");
    std::fs::create_dir(&s).unwrap();
    let alice = nix::unistd::User::from_name("berth-alice")
        .unwrap()
        .expect("test bed user berth-alice");
    std::os::unix::fs::chown(&s, Some(alice.uid.as_raw()), None).unwrap();
    let v = json(&berth(Path::new(BERTH), &p, &["doctor", "--json"]));
    assert_eq!(status(&v, "bundles"), "fail", "{v:#}");
    assert!(message(&v, "bundles").contains("owned by uid"), "{v:#}");
}

#[test]
fn a_setuid_berth_is_refused() {
    let (d, p) = site(GOOD);
    let copy = d.path().join("berth");
    std::fs::copy(BERTH, &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let r = berth(&copy, &p, &["doctor"]);
    assert_eq!(r.code, 78, "{}{}", r.stdout, r.stderr);
    assert!(
        format!("{}{}", r.stdout, r.stderr).contains("setuid"),
        "{}{}",
        r.stdout,
        r.stderr
    );
}

#[test]
fn a_broker_socket_users_cannot_reach_fails() {
    let (d, p) = site(
        GOOD.replace("@DIR@/berth.sock", "@DIR@/closed/berth.sock")
            .as_str(),
    );
    let closed = d.path().join("closed");
    std::fs::create_dir(&closed).unwrap();
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
    let v = json(&berth(Path::new(BERTH), &p, &["doctor", "--json"]));
    assert_eq!(status(&v, "broker"), "fail", "{v:#}");
    assert!(
        message(&v, "broker").contains("users cannot reach"),
        "{v:#}"
    );
    assert_eq!(v["ok"], false);
}

/// An engine that answers every request like dockerd with the systemd
/// cgroup driver would (`/info`), and a plain `/version` otherwise.
fn systemd_engine(sock: &Path) {
    use std::io::{Read, Write};
    let l = std::os::unix::net::UnixListener::bind(sock).unwrap();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            let mut buf = [0u8; 4096];
            let n = c.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]);
            let body = if req.contains("/info ") {
                r#"{"CgroupDriver":"systemd","CgroupVersion":"1"}"#.to_string()
            } else {
                r#"{"Version":"24.0.9","ApiVersion":"1.43","Os":"linux","Arch":"amd64","KernelVersion":"6.1","Components":[{"Name":"runc","Version":"1.1.12"},{"Name":"docker-init","Version":"0.19.0"}]}"#.to_string()
            };
            let _ = write!(
                c,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
}

#[test]
fn the_systemd_cgroup_driver_is_reported_with_the_fix() {
    let (d, p) = site(&format!(
        "{GOOD}\n[docker]\nsocket = \"@DIR@/engine.sock\"\n"
    ));
    systemd_engine(&d.path().join("engine.sock"));
    let r = berth(Path::new(BERTH), &p, &["doctor", "--json"]);
    let v = json(&r);
    let c = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "cgroup")
        .cloned()
        .unwrap_or_else(|| panic!("no cgroup check: {v}"));
    assert_eq!(c["status"], "fail", "{c}");
    let m = c["message"].as_str().unwrap();
    assert!(
        m.contains("systemd") && m.contains("native.cgroupdriver=cgroupfs"),
        "{m}"
    );
    assert_ne!(r.code, 0);
    let r = berth(Path::new(BERTH), &p, &["policy", "check"]);
    assert_eq!(r.code, 78, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("native.cgroupdriver=cgroupfs"),
        "{}",
        r.stdout
    );
    // With placement = none the same engine is fine for the policy.
    let (d, p) = site(&format!(
        "{GOOD}\n[docker]\nsocket = \"@DIR@/engine.sock\"\n[cgroup]\nplacement = \"none\"\nrequire_job = false\n"
    ));
    systemd_engine(&d.path().join("engine.sock"));
    let r = berth(Path::new(BERTH), &p, &["policy", "check"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
}

#[test]
fn the_gpu_mode_and_the_nodes_gpu_devices_are_reported() {
    // The test bed's node has /dev/nvidia0, /dev/nvidia1 and /dev/nvidiactl
    // (tests/setup/testbed.sh), but no NVIDIA toolkit and no CDI spec.
    let report = |gpus: &str| {
        let (_d, p) = site(&format!("{GOOD}\n[gpus]\n{gpus}\n"));
        json(&berth(Path::new(BERTH), &p, &["doctor", "--json"]))
    };
    let v = report("mode = \"devices\"");
    assert_eq!(status(&v, "gpus"), "ok", "{v:#}");
    let m = message(&v, "gpus");
    for want in [
        "/dev/nvidia0 (195:0)",
        "/dev/nvidia1 (195:1)",
        "/dev/nvidiactl (195:255)",
    ] {
        assert!(m.contains(want), "{want}: {m}");
    }
    let v = report("mode = \"none\"");
    assert_eq!(status(&v, "gpus"), "warn", "{v:#}");
    assert!(message(&v, "gpus").contains("gpus.mode"), "{v:#}");
    if !Path::new("/usr/bin/nvidia-container-runtime-hook").exists() {
        let v = report("mode = \"nvidia\"");
        assert_eq!(status(&v, "gpus"), "fail", "{v:#}");
        assert!(
            message(&v, "gpus").contains("NVIDIA container toolkit"),
            "{v:#}"
        );
    }
    let v = report("mode = \"cdi\"\ncdi_kind = \"example.org/none\"");
    assert_eq!(status(&v, "gpus"), "fail", "{v:#}");
    assert!(
        message(&v, "gpus").contains("nvidia-ctk cdi generate"),
        "{v:#}"
    );
    let v = report("mode = \"devices\"\ndevices = [\"/dev/nogpu[0-9]*\"]");
    assert_eq!(status(&v, "gpus"), "warn", "{v:#}");
}
