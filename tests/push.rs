//! Users' own bundles (SPEC §15) on the real engine, through the real
//! broker, as the testbed's real users (berth-alice and berth-bob, not in
//! the docker group): push a save tar and an export tar, run them on a
//! cold engine, list, share, remove; hostile sources and tars; quota;
//! concurrent pushes of one name; pushes killed midway; progress.
//!
//! Run as root on the testbed (`bash tests/run.sh`); a missing engine FAILS.

#[path = "common/broker.rs"]
mod broker;
mod common;

use berth::broker::proto::{self, BundleOp, DaemonMsg, Hello, VERSION};
use broker::{connect_as, install_berth, use_broker_socket, user_command, Daemon, TestUser};
use common::*;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const BOB: &str = "berth-bob";

/// A broker whose policy lets users push, with a cache in the bed, and a
/// directory of tars each test user can read. Field order: the daemon
/// stops before the bed goes.
struct Push {
    daemon: Daemon,
    bin: PathBuf,
    tars: PathBuf,
    bed: Bed,
}

fn push_bed(edit: impl FnOnce(&mut toml::Table)) -> Push {
    let mut bed = Bed::with(|p| {
        set(p, "bundles.user_push", true);
        set(p, "bundles.user_quota", "200m");
        edit(p)
    });
    let cache = bed.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o755)).unwrap();
    set(
        &mut bed.policy,
        "bundles.cache",
        cache.display().to_string(),
    );
    let locks = bed.path().join("locks").display().to_string();
    set(&mut bed.policy, "bundles.lock_dir", locks);
    let socket = use_broker_socket(&mut bed);
    let bin = install_berth(bed.path());
    let tars = bed.path().join("tars");
    std::fs::create_dir(&tars).unwrap();
    std::fs::set_permissions(&tars, std::fs::Permissions::from_mode(0o755)).unwrap();
    let daemon = Daemon::start(&bed, &socket);
    Push {
        daemon,
        bin,
        tars,
        bed,
    }
}

fn alice() -> TestUser {
    TestUser::get(ALICE)
}

fn bob() -> TestUser {
    TestUser::get(BOB)
}

/// Removes images by id when a test ends (never a berth-test/* one).
struct Images(Vec<String>);

impl Drop for Images {
    fn drop(&mut self) {
        for id in &self.0 {
            let _ = docker(&["rmi", "-f", id]);
        }
    }
}

impl Push {
    fn cache(&self) -> PathBuf {
        self.bed.path().join("cache")
    }

    fn user_dir(&self, user: &str) -> PathBuf {
        self.cache().join("users").join(user)
    }

    /// `berth bundle ARGS…` as `user` (stdin closed, not a terminal).
    fn bundle_as(&self, user: &TestUser, args: &[&str]) -> Out {
        broker::output(self.bundle_cmd(user, args))
    }

    fn bundle_cmd(&self, user: &TestUser, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--policy")
            .arg(self.bed.policy_path())
            .arg("bundle")
            .args(args)
            .env_clear()
            .env("PATH", CALLER_PATH)
            .current_dir("/")
            .stdin(Stdio::null());
        user.apply(&mut c);
        c
    }

    /// `berth bundle ARGS…` as root.
    fn bundle_root(&self, args: &[&str]) -> Out {
        let mut c = Command::new(berth_bin());
        c.arg("--policy")
            .arg(self.bed.policy_path())
            .arg("bundle")
            .args(args)
            .env_clear()
            .env("PATH", CALLER_PATH)
            .stdin(Stdio::null());
        broker::output(c)
    }

    /// A job as `user` from `image` through the broker.
    fn run_as(&self, user: &TestUser, image: &str, script: &str) -> Out {
        let job = Job::new(&self.bed)
            .image(image)
            .env("LSFUSER", &user.name)
            .env("LSF_DOCKER_NETWORK", "none")
            .cwd("/");
        broker::output(user_command(&job, user, &self.bin, &["run"], &[script]))
    }

    /// A file in the tars directory, owned by `user`, 0644 (or `mode`).
    fn own(&self, p: &Path, user: &TestUser, mode: u32) {
        std::os::unix::fs::chown(p, Some(user.uid), Some(user.gid)).unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// The export of a fresh, unique container of the test image.
    fn export_tar(&self, tag: &str) -> PathBuf {
        let c = docker(&["create", IMAGE, "true"]);
        c.expect_ok();
        let id = c.stdout.trim().to_string();
        let marker = self.tars.join(format!("marker-{tag}"));
        std::fs::write(&marker, format!("{tag} {}\n", next_job_id())).unwrap();
        docker(&[
            "cp",
            &marker.display().to_string(),
            &format!("{id}:/marker"),
        ])
        .expect_ok();
        let p = self.tars.join(format!("{tag}.export.tar"));
        docker(&["export", "-o", &p.display().to_string(), &id]).expect_ok();
        docker(&["rm", &id]).expect_ok();
        self.own(&p, &alice(), 0o644);
        p
    }

    /// A save tar of a unique image that the engine then no longer holds
    /// (a cold node); its image id.
    fn save_tar(&self, tag: &str) -> (PathBuf, String) {
        let exp = self.export_tar(&format!("{tag}-src"));
        let repo = format!("berth-it/push-{}", next_job_id());
        let imp = docker(&[
            "import",
            "--change",
            "CMD [\"/bin/sh\"]",
            &exp.display().to_string(),
            &repo,
        ]);
        imp.expect_ok();
        let id = imp.stdout.trim().to_string();
        let p = self.tars.join(format!("{tag}.save.tar"));
        docker(&["save", "-o", &p.display().to_string(), &repo]).expect_ok();
        docker(&["rmi", "-f", &id]).expect_ok();
        self.own(&p, &alice(), 0o644);
        (p, id)
    }

    fn meta(&self, user: &str, name: &str) -> toml::Table {
        let text =
            std::fs::read_to_string(self.user_dir(user).join(name).join("bundle.toml")).unwrap();
        toml::from_str(&text).unwrap()
    }

    /// What a user's cache directory holds besides its lock: bundles and
    /// any writer's leftovers.
    fn entries(&self, user: &str) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(self.user_dir(user)) else {
            return Vec::new();
        };
        let mut v: Vec<String> = rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != ".lock")
            .collect();
        v.sort();
        v
    }

    fn pushes(&self) -> Vec<serde_json::Value> {
        self.bed
            .audit()
            .into_iter()
            .filter(|r| r["event"] == "push")
            .collect()
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn alice_pushes_a_save_and_an_export_runs_both_cold_lists_and_removes_them() {
    let t = push_bed(|_| {});
    let a = alice();
    let (save, save_id) = t.save_tar("a1");
    let exp = t.export_tar("a2");
    let out = t.bundle_as(&a, &["push", "saved", "--from-save", &s(&save)]);
    out.expect_ok();
    assert!(
        out.stdout.contains("bundle berth-alice/saved published") && out.stderr.is_empty(),
        "one summary line on stdout, nothing on a non-terminal stderr: {out:?}"
    );
    t.bundle_as(
        &a,
        &[
            "push",
            "exported",
            "--from-export",
            &s(&exp),
            "--change",
            "WORKDIR /opt/pushed",
            "--change",
            "CMD [\"/bin/sh\"]",
        ],
    )
    .expect_ok();

    // Published root-owned, private to berth, with the owner recorded.
    assert_eq!(owner_mode(&t.cache().join("users")), (0, 0o711));
    assert_eq!(owner_mode(&t.user_dir(ALICE)), (0, 0o700));
    let m = t.meta(ALICE, "saved");
    assert_eq!(m["name"].as_str(), Some("berth-alice/saved"));
    assert_eq!(m["image_id"].as_str(), Some(save_id.as_str()));
    assert_eq!(m["owner"]["user"].as_str(), Some(ALICE));
    assert_eq!(m["owner"]["uid"].as_integer(), Some(ALICE_UID as i64));
    assert_eq!(m["owner"]["share"]["kind"].as_str(), Some("private"));
    assert_eq!(m["created_by"].as_str(), Some(ALICE));
    let tar = t.user_dir(ALICE).join("saved/image.tar");
    assert_eq!(owner_mode(&tar).0, 0);
    assert_eq!(
        m["size"].as_integer(),
        Some(std::fs::metadata(&tar).unwrap().len() as i64)
    );
    assert_eq!(t.entries(ALICE), vec!["exported", "saved"], "no leftovers");
    let exp_id = t.meta(ALICE, "exported")["image_id"]
        .as_str()
        .unwrap()
        .to_string();
    let _images = Images(vec![save_id.clone(), exp_id.clone()]);
    let audit = t.pushes();
    assert_eq!(audit.len(), 2, "{audit:?}");
    assert!(audit
        .iter()
        .all(|r| r["decision"] == "allow" && r["uid"] == ALICE_UID));

    // Both run on a cold engine, as alice, each loaded once.
    for (image, id) in [
        ("bundle:~/saved", &save_id),
        ("bundle:berth-alice/exported", &exp_id),
    ] {
        assert!(
            docker(&["image", "inspect", id]).code != Some(0),
            "cold: {id}"
        );
        let out = t.run_as(&a, image, "id -u; id -g; pwd");
        out.expect_ok();
        assert_eq!(out.lines()[..2], ["2001", "2001"], "{image}: {out:?}");
        let again = t.run_as(&a, image, "true");
        again.expect_ok();
        let loads: Vec<_> = t
            .bed
            .audit()
            .into_iter()
            .filter(|r| r["event"] == "load" && r["image_id"].as_str() == Some(id.as_str()))
            .collect();
        assert_eq!(loads.len(), 1, "{image} loaded once: {loads:?}");
        assert_eq!(inspect(id)["Id"].as_str(), Some(id.as_str()));
    }

    // Alice lists her own; bob sees neither.
    let list = t.bundle_as(&a, &["list"]);
    list.expect_ok();
    assert!(
        list.stdout.contains("berth-alice/saved") && list.stdout.contains("berth-alice/exported"),
        "{list:?}"
    );
    let json = t.bundle_as(&a, &["list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2, "{v}");
    let theirs = t.bundle_as(&bob(), &["list"]);
    theirs.expect_ok();
    assert!(!theirs.stdout.contains("berth-alice/"), "{theirs:?}");

    // Removed: gone from the list and from the cache; no longer runs.
    t.bundle_as(&a, &["rm", "saved"]).expect_ok();
    assert_eq!(t.entries(ALICE), vec!["exported"]);
    t.run_as(&a, "bundle:~/saved", "true")
        .expect_denied(&["no bundle \"berth-alice/saved\"", "bundles.cache"]);
    // Root sees users' bundles and may remove anyone's.
    let all = t.bundle_root(&["list"]);
    assert!(all.stdout.contains("berth-alice/exported"), "{all:?}");
    t.bundle_root(&["verify", "berth-alice/exported"])
        .expect_ok();
    t.bundle_root(&["rm", "berth-alice/exported"]).expect_ok();
    assert!(t.entries(ALICE).is_empty());
}

#[test]
fn only_its_owner_or_those_it_is_shared_with_run_a_bundle() {
    let t = push_bed(|_| {});
    let (a, b) = (alice(), bob());
    for (name, share) in [
        ("private", None),
        ("team", Some("group:berth-shared")),
        ("lab", Some("group:berth-lab1")),
    ] {
        let exp = s(&t.export_tar(name));
        let mut args = vec!["push", name, "--from-export", &exp];
        if let Some(sh) = share {
            args.extend(["--share", sh]);
        }
        t.bundle_as(&a, &args).expect_ok();
    }
    let ids: Vec<String> = ["private", "team", "lab"]
        .iter()
        .map(|n| t.meta(ALICE, n)["image_id"].as_str().unwrap().to_string())
        .collect();
    let _images = Images(ids);
    assert_eq!(
        t.meta(ALICE, "team")["owner"]["share"]["gid"].as_integer(),
        Some(3010)
    );

    // Bob: a private bundle and one that does not exist read the same.
    let private = t.run_as(&b, "bundle:berth-alice/private", "true");
    private.expect_denied(&["bundles.share"]);
    let missing = t.run_as(&b, "bundle:berth-alice/nosuch", "true");
    missing.expect_denied(&["bundles.share"]);
    assert_eq!(
        private.stderr.replace("private", "X"),
        missing.stderr.replace("nosuch", "X"),
        "a private bundle and a missing one are told apart"
    );
    // A group bob is in: he runs it as himself.
    let team = t.run_as(&b, "bundle:berth-alice/team", "id -u");
    team.expect_ok();
    assert_eq!(team.lines(), ["2002"]);
    // A group bob is not in.
    t.run_as(&b, "bundle:berth-alice/lab", "true")
        .expect_denied(&["group berth-lab1", "bundles.share"]);
    // Bob's own namespace is his: ~/team is berth-bob/team.
    t.run_as(&b, "bundle:~/team", "true")
        .expect_denied(&["no bundle \"berth-bob/team\"", "bundles.cache"]);
    // Bob cannot remove alice's bundle.
    t.bundle_as(&b, &["rm", "berth-alice/team"])
        .expect_denied(&["bundles.share"]);
    assert_eq!(t.entries(ALICE), vec!["lab", "private", "team"]);
    // Sharing with a group alice is not in, or with all (the site allows
    // only groups): refused, nothing written.
    let exp = t.export_tar("x");
    t.bundle_as(
        &a,
        &[
            "push",
            "x",
            "--from-export",
            &s(&exp),
            "--share",
            "group:berth-bob",
        ],
    )
    .expect_denied(&["not in group berth-bob", "bundles.share"]);
    t.bundle_as(
        &a,
        &["push", "x", "--from-export", &s(&exp), "--share", "all"],
    )
    .expect_denied(&["bundles.user_share"]);
    assert_eq!(t.entries(ALICE), vec!["lab", "private", "team"]);
    let denied: Vec<_> = t
        .pushes()
        .into_iter()
        .filter(|r| r["decision"] == "deny")
        .collect();
    assert_eq!(denied.len(), 2, "{denied:?}");
}

#[test]
fn a_loaded_bundle_runs_for_nobody_else_by_tag_id_or_a_name_pushed_over_it() {
    // A site allowing every registry image: tags and ids are the way in.
    let t = push_bed(|p| {
        set(p, "images.allow", toml::Value::Array(vec!["*".into()]));
        set(p, "images.pull", "never");
    });
    let (a, b) = (alice(), bob());
    let exp = t.export_tar("mine");
    t.bundle_as(&a, &["push", "mine", "--from-export", &s(&exp)])
        .expect_ok();
    let id = t.meta(ALICE, "mine")["image_id"]
        .as_str()
        .unwrap()
        .to_string();
    let _images = Images(vec![id.clone()]);
    let marker = t.run_as(&a, "bundle:~/mine", "cat /marker");
    marker.expect_ok();
    // Loaded and tagged on this node now.
    let tags = inspect(&id)["RepoTags"].clone();
    let tag = tags[0].as_str().expect("berth's tag").to_string();
    assert!(tag.starts_with("berth-bundle/"), "{tag}");
    t.run_as(&b, &tag, "true")
        .expect_denied(&["berth's mark on a loaded bundle", "images.allow"]);
    // Docker Hub's legacy name is the same name.
    t.run_as(&b, &format!("index.docker.io/{tag}"), "true")
        .expect_denied(&["berth's mark on a loaded bundle", "images.allow"]);
    // By id: an image reference names a tag, never an id.
    let by_id = t.run_as(&b, &id, "true");
    assert_ne!(by_id.code, Some(0), "{by_id:?}");
    let by_hex = t.run_as(&b, &id[7..], "true");
    assert_ne!(by_hex.code, Some(0), "{by_hex:?}");
    assert!(
        !t.bed
            .audit()
            .iter()
            .any(|r| r["event"] == "launch" && r["uid"] == 2002),
        "bob launched nothing"
    );
    // Bob pushes a bundle of the same name: his, in his namespace; alice's
    // jobs still run hers.
    let bobs = t.export_tar("bobs-mine");
    t.own(&bobs, &b, 0o644);
    t.bundle_as(&b, &["push", "mine", "--from-export", &s(&bobs)])
        .expect_ok();
    let _bobs = Images(vec![t.meta(BOB, "mine")["image_id"]
        .as_str()
        .unwrap()
        .to_string()]);
    let again = t.run_as(&a, "bundle:~/mine", "cat /marker");
    again.expect_ok();
    assert_eq!(again.stdout, marker.stdout);
    let his = t.run_as(&b, "bundle:~/mine", "cat /marker");
    his.expect_ok();
    assert_ne!(his.stdout, marker.stdout);
}

#[test]
fn a_site_that_withdraws_a_share_kind_or_user_pushes_stops_those_runs() {
    let mut t = push_bed(|_| {});
    let (a, b) = (alice(), bob());
    let exp = t.export_tar("w");
    t.bundle_as(
        &a,
        &[
            "push",
            "w",
            "--from-export",
            &s(&exp),
            "--share",
            "group:berth-shared",
        ],
    )
    .expect_ok();
    let _images = Images(vec![t.meta(ALICE, "w")["image_id"]
        .as_str()
        .unwrap()
        .to_string()]);
    t.run_as(&b, "bundle:berth-alice/w", "true").expect_ok();
    // Policy changes, broker reloads (SIGHUP).
    set(
        &mut t.bed.policy,
        "bundles.user_share",
        toml::Value::Array(vec![]),
    );
    t.bed.write_policy();
    t.daemon.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(wait_until(Duration::from_secs(10), || t
        .daemon
        .log_text()
        .contains("policy reloaded")));
    t.run_as(&b, "bundle:berth-alice/w", "true")
        .expect_denied(&["bundles.user_share"]);
    t.run_as(&a, "bundle:~/w", "true").expect_ok();
    set(&mut t.bed.policy, "bundles.user_push", false);
    t.bed.write_policy();
    t.daemon.signal(nix::sys::signal::Signal::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    t.run_as(&a, "bundle:~/w", "true")
        .expect_denied(&["bundles.user_push"]);
    t.bundle_as(&a, &["push", "w2", "--from-export", &s(&exp)])
        .expect_denied(&["bundles.user_push"]);
}

/// Build a tar in memory from (path, type, data or link target).
fn tar_of(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, kind, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        let name = h.as_old_mut();
        name.name[..path.len()].copy_from_slice(path.as_bytes());
        if matches!(kind, tar::EntryType::Link | tar::EntryType::Symlink) {
            h.as_old_mut().linkname[..data.len()].copy_from_slice(data);
            h.set_size(0);
            h.set_cksum();
            b.append(&h, std::io::empty()).unwrap();
        } else {
            h.set_size(data.len() as u64);
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
    }
    b.into_inner().unwrap()
}

/// A one-layer save tar around `layer`, its config digest correct (or
/// `config_override` in place of the config whose name says otherwise).
fn save_of(layer: &[u8], config_override: Option<&[u8]>) -> Vec<u8> {
    let diff = sha256(layer);
    let cfg = format!(
        "{{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{{\"Cmd\":[\"/bin/sh\"]}},\"rootfs\":{{\"type\":\"layers\",\"diff_ids\":[\"sha256:{diff}\"]}}}}"
    );
    let cfg_name = format!("{}.json", sha256(cfg.as_bytes()));
    let manifest =
        format!("[{{\"Config\":\"{cfg_name}\",\"RepoTags\":null,\"Layers\":[\"l/layer.tar\"]}}]");
    tar_of(&[
        ("l/layer.tar", tar::EntryType::Regular, layer),
        (
            &cfg_name,
            tar::EntryType::Regular,
            config_override.unwrap_or(cfg.as_bytes()),
        ),
        (
            "manifest.json",
            tar::EntryType::Regular,
            manifest.as_bytes(),
        ),
    ])
}

fn sha256(b: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

#[test]
fn hostile_sources_are_refused_without_root_opening_them() {
    let t = push_bed(|_| {});
    let (a, b) = (alice(), bob());
    let (good, _id) = t.save_tar("h");
    // Bob's own 0600 tar: alice cannot open it, so the broker never sees it.
    let bobs = t.tars.join("bobs.tar");
    std::fs::copy(&good, &bobs).unwrap();
    t.own(&bobs, &b, 0o600);
    let fifo = t.tars.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o666)).unwrap();
    let shadow = t.tars.join("shadow.tar");
    std::os::unix::fs::symlink("/etc/shadow", &shadow).unwrap();
    for (src, want) in [
        (s(&bobs), "Permission denied"),
        (s(&fifo), "pipe (FIFO)"),
        ("/dev/zero".to_string(), "device"),
        (s(&shadow), "Permission denied"),
        (s(&t.tars), "directory"),
    ] {
        let mut c = t.bundle_cmd(&a, &["push", "x", "--from-save", &src]);
        let child = c
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // A FIFO must not make anyone wait for a writer.
        let out = broker::finish(child, Duration::from_secs(20));
        out.expect_code(64);
        assert!(out.stderr.contains(want), "{src}: {out:?}");
    }
    // The broker was never asked: nothing audited, nothing written.
    assert!(t.pushes().is_empty(), "{:?}", t.pushes());
    assert!(t.entries(ALICE).is_empty());

    // A hand-made client passing such descriptors itself: refused by the
    // broker, which checks what it was given (fstat, open mode).
    let zero = std::fs::File::open("/dev/zero").unwrap();
    let fifo_fd = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags_nonblock()
        .open(&fifo)
        .unwrap();
    let path_fd = nix::fcntl::open(
        &good,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .unwrap();
    let wronly = std::fs::OpenOptions::new().write(true).open(&good).unwrap();
    let socket = t.bed.path().join("sock").join("berth.sock");
    for (fd, want) in [
        (zero.as_raw_fd(), "device"),
        (fifo_fd.as_raw_fd(), "pipe (FIFO)"),
        (path_fd, "path handle"),
        (wronly.as_raw_fd(), "writing only"),
    ] {
        let stream = connect_as(&a, &socket);
        let h = Hello {
            version: VERSION,
            scheduler: "bundle".into(),
            env: Default::default(),
            cwd: None,
            command: vec![],
            tmp_files: vec![],
            slurm_id: None,
            explain: None,
            bundle: Some(BundleOp::Push {
                name: "x".into(),
                export: false,
                changes: vec![],
                share: None,
            }),
            slurm_task_dir: None,
        };
        proto::send_hello(&stream, &h, [fd, 1, 2]).unwrap();
        let mut r = &*stream;
        let reply = proto::read_frame::<DaemonMsg>(&mut r, proto::MAX_HELLO).unwrap();
        match reply {
            Some(DaemonMsg::Error { code, message }) => {
                assert_eq!(code, 64, "{message}");
                assert!(message.contains(want), "{want}: {message}");
            }
            other => panic!("{want}: {other:?}"),
        }
    }
    let _ = nix::unistd::close(path_fd);
    assert!(t.entries(ALICE).is_empty(), "{:?}", t.entries(ALICE));
}

/// `OpenOptions::custom_flags(O_NONBLOCK)`, named for what it is for here.
trait NonBlock {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}

impl NonBlock for std::fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NONBLOCK)
    }
}

#[test]
fn hostile_tars_and_names_are_refused_and_nothing_is_published() {
    let t = push_bed(|_| {});
    let a = alice();
    let (good, _) = t.save_tar("g");
    let bytes = std::fs::read(&good).unwrap();
    let sh: &[u8] = b"#!/bin/sh\n";
    let layer_ok = tar_of(&[("bin/sh", tar::EntryType::Regular, sh)]);
    let cases: Vec<(&str, Vec<u8>, bool, &str)> = vec![
        (
            "truncated",
            bytes[..bytes.len() / 2].to_vec(),
            false,
            "truncated",
        ),
        (
            "absolute",
            tar_of(&[("/etc/passwd", tar::EntryType::Regular, b"x")]),
            true,
            "absolute",
        ),
        (
            "dotdot",
            tar_of(&[("a/../../etc/cron.d/x", tar::EntryType::Regular, b"x")]),
            true,
            "..",
        ),
        (
            "hardlink",
            tar_of(&[
                ("bin/sh", tar::EntryType::Regular, sh),
                ("x", tar::EntryType::Link, b"../../etc/shadow"),
            ]),
            true,
            "outside",
        ),
        (
            "layer-dotdot",
            save_of(
                &tar_of(&[("../../evil", tar::EntryType::Regular, b"x")]),
                None,
            ),
            false,
            "..",
        ),
        (
            "digest",
            save_of(
                &layer_ok,
                Some(b"{\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[]}}"),
            ),
            false,
            "layers",
        ),
    ];
    for (name, data, export, want) in &cases {
        let p = t.tars.join(format!("{name}.tar"));
        std::fs::write(&p, data).unwrap();
        t.own(&p, &a, 0o644);
        let flag = if *export {
            "--from-export"
        } else {
            "--from-save"
        };
        let out = t.bundle_as(&a, &["push", name, flag, &s(&p)]);
        assert_eq!(out.code, Some(64), "{name}: {out:?}");
        assert!(out.stderr.contains(want), "{name}: want {want:?}: {out:?}");
        assert!(
            t.entries(ALICE).is_empty(),
            "{name}: {:?}",
            t.entries(ALICE)
        );
    }
    // Names that cannot be a directory of the cache.
    for bad in ["a/b", "..", "../x", ".hidden", "x y", "x$", &"n".repeat(65)] {
        let out = t.bundle_as(&a, &["push", bad, "--from-save", &s(&good)]);
        out.expect_code(64);
        assert!(out.stderr.contains("bundle name"), "{bad}: {out:?}");
    }
    assert!(t.entries(ALICE).is_empty(), "{:?}", t.entries(ALICE));
    // The good tar passes: the cases failed for their own reasons.
    t.bundle_as(&a, &["push", "fine", "--from-save", &s(&good)])
        .expect_ok();
    let _images = Images(vec![t.meta(ALICE, "fine")["image_id"]
        .as_str()
        .unwrap()
        .to_string()]);
    assert_eq!(t.entries(ALICE), vec!["fine"]);
}

#[test]
fn quota_counts_all_of_a_users_bundles_before_anything_is_written() {
    let t = push_bed(|p| set(p, "bundles.user_quota", "5m"));
    let a = alice();
    let one = t.export_tar("q1");
    let two = t.export_tar("q2");
    let size = std::fs::metadata(&one).unwrap().len();
    assert!(
        size > 1 << 20 && 2 * size < 5 << 20 && 3 * size > 5 << 20,
        "{size}"
    );
    t.bundle_as(&a, &["push", "one", "--from-export", &s(&one)])
        .expect_ok();
    t.bundle_as(&a, &["push", "two", "--from-export", &s(&two)])
        .expect_ok();
    let ids: Vec<String> = ["one", "two"]
        .iter()
        .map(|n| t.meta(ALICE, n)["image_id"].as_str().unwrap().into())
        .collect();
    let _images = Images(ids);
    let over = t.bundle_as(&a, &["push", "three", "--from-export", &s(&one)]);
    over.expect_denied(&["5.0 MiB quota", "berth bundle rm", "bundles.user_quota"]);
    assert_eq!(t.entries(ALICE), vec!["one", "two"], "nothing written");
    // Replacing a bundle counts it once.
    t.bundle_as(&a, &["push", "two", "--from-export", &s(&one)])
        .expect_ok();
    // After a removal there is room again.
    t.bundle_as(&a, &["rm", "~/two"]).expect_ok();
    t.bundle_as(&a, &["push", "three", "--from-export", &s(&two)])
        .expect_ok();
    assert_eq!(t.entries(ALICE), vec!["one", "three"]);
    // Bob's quota is his own.
    let bobs = t.export_tar("qb");
    t.own(&bobs, &bob(), 0o644);
    t.bundle_as(&bob(), &["push", "one", "--from-export", &s(&bobs)])
        .expect_ok();
}

#[test]
fn concurrent_pushes_of_one_name_end_with_one_whole_bundle() {
    let t = push_bed(|_| {});
    let a = alice();
    let tars: Vec<PathBuf> = (0..2).map(|i| t.export_tar(&format!("c{i}"))).collect();
    let children: Vec<_> = tars
        .iter()
        .map(|p| {
            t.bundle_cmd(&a, &["push", "same", "--from-export", &s(p)])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        broker::finish(c, Duration::from_secs(60)).expect_ok();
    }
    assert_eq!(t.entries(ALICE), vec!["same"], "one bundle, no leftovers");
    let id = t.meta(ALICE, "same")["image_id"]
        .as_str()
        .unwrap()
        .to_string();
    let _images = Images(vec![id.clone()]);
    let pushed: Vec<String> = t
        .pushes()
        .iter()
        .map(|r| r["image_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(pushed.len(), 2);
    assert!(pushed.contains(&id), "the bundle is one of the two pushes");
    // Whole: its tar hashes as recorded, its config is its id.
    t.bundle_root(&["verify", "berth-alice/same"]).expect_ok();
    let out = t.run_as(&a, "bundle:~/same", "cat /marker");
    out.expect_ok();
}

/// A valid rootfs tar of `size` bytes, nearly all of it a hole (fast to
/// read, and slow enough to push that it can be killed midway).
fn sparse_export(dir: &Path, size: u64) -> PathBuf {
    let p = dir.join("sparse.export.tar");
    let mut h = tar::Header::new_gnu();
    h.set_path("big").unwrap();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(size);
    h.set_mtime(0);
    h.set_cksum();
    let mut f = std::fs::File::create(&p).unwrap();
    f.write_all(h.as_bytes()).unwrap();
    // The data (a hole), padding, and two zero blocks at the end.
    f.set_len(512 + size.div_ceil(512) * 512 + 1024).unwrap();
    p
}

#[test]
fn a_push_killed_midway_leaves_nothing_visible_and_gc_removes_its_temp() {
    let mut t = push_bed(|p| set(p, "bundles.user_quota", "20g"));
    let a = alice();
    let big = sparse_export(&t.tars, 2 << 30);
    t.own(&big, &a, 0o644);
    let temp_growing = |t: &Push| {
        t.entries(ALICE).iter().any(|n| {
            n.starts_with(".tmp-big-")
                && std::fs::metadata(t.user_dir(ALICE).join(n).join("image.tar"))
                    .is_ok_and(|m| m.len() > 0)
        })
    };

    // A push of the big tar, once it is writing.
    let start_push = |t: &Push, stderr: Stdio| {
        let child = t
            .bundle_cmd(&a, &["push", "big", "--from-export", &s(&big)])
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        assert!(
            wait_until(Duration::from_secs(30), || temp_growing(t)),
            "the push started"
        );
        child
    };

    // 1. The client is killed: the broker abandons the push and removes
    //    what it wrote.
    let mut child = start_push(&t, Stdio::null());
    let _ = child.kill();
    let _ = child.wait();
    // The broker removes its temp, then writes the audit record: wait for
    // both, or the check races the record (it did, once, in CI).
    assert!(
        wait_until(Duration::from_secs(30), || t.entries(ALICE).is_empty()
            && !t.pushes().is_empty()),
        "left: {:?}, records: {:?}",
        t.entries(ALICE),
        t.pushes()
    );
    let r = t.pushes();
    assert_eq!(r.len(), 1, "{r:?}");
    assert!(
        r[0]["reason"].as_str().unwrap_or("").contains("abandoned"),
        "{r:?}"
    );

    // 2. The broker itself is killed: its temp directory stays, invisible
    //    (not listed, not runnable, not counted), until gc removes it.
    let child = start_push(&t, Stdio::piped());
    t.daemon.signal(nix::sys::signal::Signal::SIGKILL);
    let out = broker::finish(child, Duration::from_secs(30));
    out.expect_code(69);
    let left = t.entries(ALICE);
    assert!(
        left.len() == 1 && left[0].starts_with(".tmp-big-"),
        "{left:?}"
    );
    let socket = t.bed.path().join("sock").join("berth.sock");
    t.daemon = Daemon::start(&t.bed, &socket);
    let list = t.bundle_as(&a, &["list"]);
    assert!(!list.stdout.contains("big"), "{list:?}");
    assert!(list.stdout.contains("0 B of a 20.0 GiB quota"), "{list:?}");
    t.run_as(&a, "bundle:~/big", "true")
        .expect_denied(&["bundles.cache"]);
    let gc = t.bundle_root(&["gc", "--min-age", "0", "--cache-only"]);
    gc.expect_ok();
    assert!(gc.stdout.contains(".tmp-big-"), "{gc:?}");
    assert!(t.entries(ALICE).is_empty(), "{:?}", t.entries(ALICE));
}

#[test]
fn progress_is_drawn_on_a_terminal_and_only_there() {
    let t = push_bed(|_| {});
    let a = alice();
    let exp = t.export_tar("p");
    // script(1) gives the push a terminal.
    let cmdline = format!(
        "{} --policy {} bundle push p --from-export {}",
        t.bin.display(),
        t.bed.policy_path().display(),
        s(&exp)
    );
    let mut c = Command::new("script");
    c.args(["-qec", &cmdline, "/dev/null"])
        .env_clear()
        .env("PATH", CALLER_PATH)
        .env("TERM", "dumb")
        .current_dir("/")
        .stdin(Stdio::null());
    a.apply(&mut c);
    let out = broker::output(c);
    out.expect_ok();
    assert!(
        out.stdout.contains("\rpushing p  ") && out.stdout.contains(" / "),
        "a progress line: {:?}",
        out.stdout
    );
    assert!(
        out.stdout.contains("bundle berth-alice/p published"),
        "{out:?}"
    );
    let _images = Images(vec![t.meta(ALICE, "p")["image_id"]
        .as_str()
        .unwrap()
        .to_string()]);
    // Not a terminal: the summary only (alice_pushes_… checks stderr).
    let plain = t.bundle_as(&a, &["push", "p", "--from-export", &s(&exp)]);
    plain.expect_ok();
    assert!(
        !plain.stdout.contains('\r') && !plain.stderr.contains('\r'),
        "{plain:?}"
    );
}
