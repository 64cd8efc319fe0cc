//! The Slurm fixture of the integration tests that drive real Slurm jobs
//! (tests/slurm.rs, tests/workflows.rs, tests/examples.rs): which Slurm (22.05 on the host or
//! 24.11 in the trixie tree, `BERTH_SLURM`), one shared broker, bundle
//! cache and /etc/slurm/oci.conf, held under a lock so two test binaries on
//! one machine never mix their oci.conf, and the client commands as a
//! test user.
//!
//! Included with `#[path = "common/slurm.rs"] mod slurmbed;` next to
//! `mod common;` and `#[path = "common/broker.rs"] mod broker;`.
#![allow(dead_code)]

use crate::broker::{self, install_berth, use_broker_socket, Daemon, TestUser};
use crate::common::*;
use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

pub const LOCK: &str = "/run/berth-testbed/slurm-tests.lock";

/// Which Slurm these tests drive: the host's 22.05 (default), or with
/// `BERTH_SLURM=24.11` the Slurm 24.11 of the test bed's trixie tree
/// (tests/setup/slurm24.sh), whose clients, daemons and oci.conf are inside
/// that tree and whose node is `trixie1`. The broker, the engine and the
/// tests' files are the host's, shared with the tree as a node shares them.
pub struct Gen {
    /// The tree Slurm's commands run in (`None`: the host).
    pub root: Option<&'static str>,
    /// Slurm's node name (its cgroups are `/slurm_<node>/…`).
    pub node: String,
    /// The oci.conf shipped for this generation (wrapper/slurm/).
    pub shipped: &'static str,
}

pub fn gen() -> &'static Gen {
    static G: std::sync::OnceLock<Gen> = std::sync::OnceLock::new();
    G.get_or_init(|| match std::env::var("BERTH_SLURM").as_deref() {
        Ok("24.11") => Gen {
            root: Some("/var/lib/berth-testbed/trixie"),
            node: "trixie1".into(),
            shipped: "oci.conf.23.02-ignore-config-json",
        },
        Ok(other) if !other.is_empty() && other != "22.05" => {
            panic!("BERTH_SLURM={other}: the test bed has 22.05 and 24.11")
        }
        _ => Gen {
            root: None,
            node: nix::unistd::gethostname()
                .unwrap()
                .into_string()
                .unwrap()
                .split('.')
                .next()
                .unwrap()
                .to_string(),
            shipped: "oci.conf",
        },
    })
}

impl Gen {
    /// Slurm's oci.conf as slurmstepd reads it, on the host's filesystem.
    pub fn oci_conf(&self) -> PathBuf {
        Path::new(self.root.unwrap_or("/")).join("etc/slurm/oci.conf")
    }

    /// A Slurm command as root (scontrol, sinfo, sstat, scancel).
    pub fn root_cmd(&self, prog: &str) -> Command {
        match self.root {
            None => Command::new(prog),
            Some(r) => {
                let mut c = Command::new("/usr/sbin/chroot");
                c.arg(r).arg(prog);
                c
            }
        }
    }

    /// Slurm 23.02+ with the IgnoreFileConfigJson oci.conf.
    pub fn is_24(&self) -> bool {
        self.root.is_some()
    }
}

/// The shared fixture: a bed whose policy has a bundle cache and a broker
/// socket, the broker, a bundle of berth-test/busybox:1, a copy of berth
/// the job users may run, and /etc/slurm/oci.conf pointing at both.
pub struct Slurm {
    _relay: Option<Relay>,
    pub daemon: Daemon,
    pub bundle: PathBuf,
    oci_conf: String,
    pub bed: Bed,
    _lock: std::fs::File,
}

impl Drop for Slurm {
    fn drop(&mut self) {
        let oci = gen().oci_conf();
        if std::fs::read_to_string(&oci).ok().as_deref() == Some(self.oci_conf.as_str()) {
            let _ = std::fs::remove_file(&oci);
        }
    }
}

/// See `setup`: Slurm 24.11's job records, copied out of its chroot for the
/// broker's scontrol while the fixture lives.
pub struct Relay {
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Relay {
    fn start(root: &'static str, records_dir: PathBuf) -> Relay {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(o) = Command::new("/usr/sbin/chroot")
                    .args([root, "/usr/bin/scontrol", "show", "job", "-d"])
                    .env_clear()
                    .env("PATH", CALLER_PATH)
                    .output()
                {
                    // One record per job, each starting with its JobId= line.
                    let text = String::from_utf8_lossy(&o.stdout).into_owned();
                    let mut records: Vec<String> = Vec::new();
                    for line in text.lines() {
                        if line.starts_with("JobId=") || records.is_empty() {
                            records.push(String::new());
                        }
                        let r = records.last_mut().unwrap();
                        r.push_str(line);
                        r.push('\n');
                    }
                    for r in records {
                        let Some(id) = r
                            .strip_prefix("JobId=")
                            .and_then(|x| x.split_whitespace().next())
                        else {
                            continue;
                        };
                        if r.contains("JobState=RUNNING") && r.contains("(IDX:") {
                            let tmp = records_dir.join(format!(".{id}"));
                            if std::fs::write(&tmp, &r).is_ok() {
                                let _ = std::fs::rename(&tmp, records_dir.join(id));
                            }
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Relay { stop }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The fixture, shared by the tests that run at the same time; set up
/// again (new broker, new bundle) if every user of the last one is done.
pub fn slurm() -> Arc<Slurm> {
    static SHARED: Mutex<Weak<Slurm>> = Mutex::new(Weak::new());
    let mut g = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = g.upgrade() {
        return s;
    }
    let s = Arc::new(setup());
    *g = Arc::downgrade(&s);
    s
}

#[track_caller]
pub fn require_slurm() {
    let st = gen()
        .root_cmd("/usr/bin/sinfo")
        .args(["-h", "-p", "debug", "-o", "%T"])
        .env_clear()
        .env("PATH", CALLER_PATH)
        .output();
    let state = st
        .as_ref()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    assert!(
        ["idle", "mixed", "allocated"].contains(&state.as_str()),
        "Slurm is not up (sinfo: {state:?}, {:?}); run `bash tests/setup/testbed.sh up`",
        st.as_ref()
            .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
    );
}

pub fn setup() -> Slurm {
    require_testbed();
    require_slurm();
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK)
        .unwrap_or_else(|e| panic!("{LOCK}: {e}"));
    // SAFETY: flock on a descriptor we own.
    assert_eq!(
        unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) },
        0,
        "flock {LOCK}"
    );

    let mut bed = Bed::with(|p| {
        // The host network for MPI ranks (SPEC §14): they reach their
        // node's PMIx server over its loopback.
        set(p, "docker.networks", vec!["none", "bridge", "host"]);
        set(p, "mpi.pmix", true);
        // The testbed's node has two GPU-like device nodes as GRES.
        set(p, "gpus.mode", "devices");
        // Users' own bundles by name (SPEC §15).
        set(p, "bundles.user_push", true);
    });
    let cache = bed.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    std::fs::set_permissions(&cache, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    set(
        &mut bed.policy,
        "bundles.cache",
        cache.display().to_string(),
    );
    // The broker asks Slurm for a job's GRES (gpus.scontrol). The 24.11
    // Slurm lives in a chroot the broker (which holds no CAP_SYS_CHROOT)
    // cannot enter, so the fixture relays its records: a thread copies
    // `scontrol -o show job -d` of every job into records/<id>, and the
    // scontrol the broker runs prints the job's.
    let relay = gen().root.map(|root| {
        let records = bed.path().join("records");
        std::fs::create_dir(&records).unwrap();
        let sc = bed.path().join("scontrol");
        std::fs::write(
            &sc,
            format!(
                "#!/bin/sh\n# berth's test bed: Slurm 24.11's records, relayed (tests/slurm.rs).\n\
                 for i in $(seq 50); do [ -s {r}/$4 ] && exec cat {r}/$4; sleep 0.1; done; exit 1\n",
                r = records.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&sc, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        set(&mut bed.policy, "gpus.scontrol", sc.display().to_string());
        Relay::start(root, records)
    });
    let socket = use_broker_socket(&mut bed);
    let bin = install_berth(bed.path());

    let name = format!("slurm-{}", next_job_id());
    let out = broker::output({
        let mut c = Command::new(berth_bin());
        c.arg("--policy")
            .arg(bed.policy_path())
            .args(["bundle", "create", &name, "--from-image", IMAGE])
            .env_clear()
            .env("PATH", CALLER_PATH)
            .stdin(Stdio::null());
        c
    });
    out.expect_ok();
    let bundle = cache.join(&name);
    assert!(bundle.join("config.json").is_file() && bundle.join("rootfs").is_dir());

    let daemon = Daemon::start(&bed, &socket);

    // The shipped oci.conf, with berth under test and the test policy.
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("wrapper/slurm")
            .join(gen().shipped),
    )
    .unwrap();
    // `exec`: the task is berth itself (wrapper/slurm/README.md).
    assert!(shipped.contains("RunTimeRun=\"exec /usr/bin/berth slurm run "));
    let oci_conf = shipped.replace(
        "/usr/bin/berth ",
        &format!(
            "{} --policy {} ",
            bin.display(),
            bed.policy_path().display()
        ),
    );
    let oci = gen().oci_conf();
    let tmp = oci.with_extension("conf.berth-test");
    std::fs::write(&tmp, &oci_conf).unwrap();
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::rename(&tmp, &oci).unwrap();

    Slurm {
        _relay: relay,
        daemon,
        bundle,
        oci_conf,
        bed,
        _lock: lock,
    }
}

pub fn alice() -> TestUser {
    TestUser::get(ALICE)
}

/// A Slurm client command (`srun`, `sbatch`, `scancel`) as `user`, with a
/// login-like environment plus `env`, from `cwd`.
/// On 24.11 the command runs inside the trixie tree (chroot execs a shell
/// that execs it: still one process, so signals reach it).
pub fn client(user: &TestUser, prog: &str, env: &[(&str, &str)], cwd: &Path) -> Command {
    let mut c = match gen().root {
        None => {
            let mut c = Command::new(prog);
            c.current_dir(cwd);
            user.apply(&mut c);
            c
        }
        Some(root) => {
            let groups: Vec<String> = user.groups.iter().map(u32::to_string).collect();
            let mut c = Command::new("/usr/sbin/chroot");
            c.arg(format!("--userspec={}:{}", user.uid, user.gid))
                .arg(format!("--groups={}", groups.join(",")))
                .arg(root)
                .args(["/bin/sh", "-c", "cd \"$0\" && exec \"$@\""])
                .arg(cwd)
                .arg(prog);
            c
        }
    };
    c.env_clear()
        .env("PATH", CALLER_PATH)
        .env("HOME", format!("/home/{}", user.name))
        .env("USER", &user.name)
        .env("LOGNAME", &user.name)
        .envs(env.iter().copied())
        .stdin(Stdio::null());
    c
}

pub fn unique(tag: &str) -> String {
    format!("berth-it-{tag}-{}", next_job_id())
}

impl Slurm {
    pub fn container_arg(&self) -> String {
        format!("--container={}", self.bundle.display())
    }

    /// `srun --container=<bundle> ARGS…` as alice from `cwd`, with `stdin`.
    pub fn srun(
        &self,
        env: &[(&str, &str)],
        cwd: &Path,
        args: &[&str],
        stdin: Option<&[u8]>,
    ) -> Out {
        let mut c = client(&alice(), "/usr/bin/srun", env, cwd);
        c.arg(format!("--job-name={}", unique("srun")))
            .arg(self.container_arg())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if stdin.is_some() {
            c.stdin(Stdio::piped());
        }
        let mut child = c.spawn().expect("srun");
        if let Some(data) = stdin {
            let mut w = child.stdin.take().unwrap();
            w.write_all(data).unwrap();
        }
        broker::finish(child, Duration::from_secs(90))
    }

    /// `sbatch --container=<bundle> --wrap SCRIPT` as alice from `dir`,
    /// output and error to `dir/<name>.out|.err`; the job id.
    pub fn sbatch(&self, env: &[(&str, &str)], dir: &Path, name: &str, script: &str) -> String {
        let out = broker::output({
            let mut c = client(&alice(), "/usr/bin/sbatch", env, dir);
            c.arg("--parsable")
                .arg(format!("--job-name={name}"))
                .arg(format!("--output={}/{name}.out", dir.display()))
                .arg(format!("--error={}/{name}.err", dir.display()))
                .arg(self.container_arg())
                .arg("--wrap")
                .arg(script);
            c
        });
        out.expect_ok();
        let id = out.stdout.trim().split(';').next().unwrap().to_string();
        assert!(
            id.bytes().all(|b| b.is_ascii_digit()),
            "sbatch said {out:?}"
        );
        id
    }
}

/// `scontrol show job -o ID` as key → value.
pub fn job_info(id: &str) -> BTreeMap<String, String> {
    let out = gen()
        .root_cmd("/usr/bin/scontrol")
        .args(["show", "job", "-o", id])
        .env_clear()
        .env("PATH", CALLER_PATH)
        .output()
        .expect("scontrol");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub const ENDED: &[&str] = &[
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
    "PREEMPTED",
];

/// The id of the (one) job named `name` that Slurm still knows.
pub fn job_id_named(name: &str) -> String {
    let out = gen()
        .root_cmd("/usr/bin/scontrol")
        .args(["-o", "show", "job"])
        .env_clear()
        .env("PATH", CALLER_PATH)
        .output()
        .expect("scontrol");
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.split_whitespace().any(|w| w == format!("JobName={name}")))
        .filter_map(|l| {
            l.strip_prefix("JobId=")?
                .split_whitespace()
                .next()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(ids.len(), 1, "jobs named {name}: {ids:?}");
    ids[0].clone()
}

/// Wait for a batch job to end: (JobState, ExitCode).
#[track_caller]
pub fn wait_job(id: &str, timeout: Duration) -> (String, String) {
    let mut info = BTreeMap::new();
    let done = wait_until(timeout, || {
        info = job_info(id);
        info.get("JobState")
            .is_some_and(|s| ENDED.contains(&s.as_str()))
    });
    assert!(done, "job {id} did not end within {timeout:?}: {info:?}");
    (info["JobState"].clone(), info["ExitCode"].clone())
}

/// Wait (a little) for a file Slurm writes at the end of a job.
pub fn read_output(p: &Path) -> String {
    let mut s = String::new();
    wait_until(Duration::from_secs(5), || {
        s = std::fs::read_to_string(p).unwrap_or_default();
        !s.is_empty()
    });
    s
}
