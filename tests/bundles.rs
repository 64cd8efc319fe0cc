//! Bundles (SPEC §6) on the real Docker engine: create from the three
//! sources, run jobs from them, refuse corrupt or unsafe bundles, load
//! once under concurrency, and never trust a tag.
//!
//! Every test has its own cache under its own bed, unique bundle contents
//! (exports of fresh containers, so unique image ids) and removes the
//! images it loaded by id. berth-test/* images are never removed.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// `berth bundle gc` untags every berth-loaded image whose bundle is not in
/// *its* cache: the gc test runs alone (write), the others share (read).
static ENGINE: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    ENGINE.read().unwrap_or_else(|e| e.into_inner())
}

/// A bed whose policy has a bundle cache (root-owned 0755) and lock dir.
fn bundle_bed() -> Bed {
    let mut bed = Bed::new();
    let cache = bed.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cache_s = cache.display().to_string();
    let locks = bed.path().join("locks").display().to_string();
    set(&mut bed.policy, "bundles.cache", cache_s);
    set(&mut bed.policy, "bundles.lock_dir", locks);
    bed.write_policy();
    bed
}

fn cache(bed: &Bed) -> PathBuf {
    bed.path().join("cache")
}

/// `berth --policy P bundle ARGS…` as root.
fn bundle(bed: &Bed, args: &[&str]) -> Out {
    let out = Command::new(berth_bin())
        .arg("--policy")
        .arg(bed.policy_path())
        .arg("bundle")
        .args(args)
        .env_clear()
        .env("PATH", CALLER_PATH)
        .stdin(Stdio::null())
        .output()
        .expect("run berth bundle");
    use std::os::unix::process::ExitStatusExt;
    Out {
        code: out.status.code(),
        signal: out.status.signal(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The export of a fresh container of `image`, made unique by a marker
/// file (two exports in the same second are otherwise identical, and the
/// engine skips a layer it already holds), in the bed.
fn export_tar(bed: &Bed, image: &str) -> PathBuf {
    let c = docker(&["create", image, "true"]);
    c.expect_ok();
    let id = c.stdout.trim().to_string();
    let unique = next_job_id();
    let marker = bed.path().join(format!("marker-{unique}"));
    std::fs::write(&marker, format!("{unique} {id}\n")).unwrap();
    docker(&[
        "cp",
        &marker.display().to_string(),
        &format!("{id}:/marker"),
    ])
    .expect_ok();
    let p = bed.path().join(format!("export-{unique}.tar"));
    docker(&["export", "-o", &p.display().to_string(), &id]).expect_ok();
    docker(&["rm", &id]).expect_ok();
    p
}

fn meta(bed: &Bed, name: &str) -> toml::Table {
    let text = std::fs::read_to_string(cache(bed).join(name).join("bundle.toml")).unwrap();
    toml::from_str(&text).unwrap()
}

fn meta_id(bed: &Bed, name: &str) -> String {
    meta(bed, name)["image_id"].as_str().unwrap().to_string()
}

fn image_present(id: &str) -> bool {
    docker(&["image", "inspect", "--format", "{{.Id}}", id]).code == Some(0)
}

/// Removes an image by id at the end of a test (never a berth-test/* one).
struct ImageGuard(String);

impl Drop for ImageGuard {
    fn drop(&mut self) {
        let _ = docker(&["rmi", "-f", &self.0]);
    }
}

/// A unique export bundle of berth-test/busybox:1; its image id.
fn export_bundle(bed: &Bed, name: &str) -> (String, ImageGuard) {
    let tar = export_tar(bed, IMAGE);
    let label = format!("LABEL berth.test={}", next_job_id());
    bundle(
        bed,
        &[
            "create",
            name,
            "--from-export",
            &tar.display().to_string(),
            "--change",
            "WORKDIR /opt/imgwork",
            "--change",
            "ENV BUNDLE_VAR=from-bundle",
            "--change",
            "CMD [\"/bin/sh\"]",
            "--change",
            &label,
        ],
    )
    .expect_ok();
    let id = meta_id(bed, name);
    assert!(
        !image_present(&id),
        "a fresh export bundle is not loaded yet"
    );
    (id.clone(), ImageGuard(id))
}

fn load_events(bed: &Bed, id: &str) -> Vec<serde_json::Value> {
    bed.audit()
        .into_iter()
        .filter(|r| r["event"] == "load" && r["image_id"].as_str() == Some(id))
        .collect()
}

/// Facts recorded in bundle.toml equal what the engine says of the image.
fn assert_facts_match(bed: &Bed, name: &str) {
    let m = meta(bed, name);
    let id = m["image_id"].as_str().unwrap();
    let v = inspect(id);
    assert_eq!(v["Id"].as_str(), Some(id));
    let strs = |x: &serde_json::Value| -> Vec<String> {
        x.as_array()
            .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };
    let tstrs = |x: &toml::Value| -> Vec<String> {
        x.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    let c = &v["Config"];
    assert_eq!(
        strs(&c["Entrypoint"]),
        tstrs(&m["entrypoint"]),
        "entrypoint"
    );
    assert_eq!(strs(&c["Cmd"]), tstrs(&m["cmd"]), "cmd");
    assert_eq!(strs(&c["Env"]), tstrs(&m["env"]), "env");
    assert_eq!(
        c["WorkingDir"].as_str().unwrap_or(""),
        m["workdir"].as_str().unwrap(),
        "workdir"
    );
    assert_eq!(
        c["User"].as_str().unwrap_or(""),
        m["user"].as_str().unwrap(),
        "user"
    );
    let size = std::fs::metadata(cache(bed).join(name).join("image.tar"))
        .unwrap()
        .len();
    assert_eq!(m["size"].as_integer(), Some(size as i64));
}

#[test]
fn from_image_runs_by_id_and_facts_match() {
    let _engine = shared();
    let bed = bundle_bed();
    let name = format!("img-{}", next_job_id());
    bundle(&bed, &["create", &name, "--from-image", IMAGE]).expect_ok();
    let id = meta_id(&bed, &name);
    assert_eq!(id, image_id(IMAGE), "docker save round-trips the image id");
    assert_facts_match(&bed, &name);
    assert_eq!(meta(&bed, &name)["has_shell"].as_bool(), Some(true));
    // The OCI runtime bundle for sbatch --container.
    let dir = cache(&bed).join(&name);
    assert!(dir.join("rootfs").is_dir());
    let oci: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(oci["root"]["path"], "rootfs");
    assert_eq!(oci["annotations"]["org.berth.image_id"], id.as_str());
    // The engine has it: a hit, no load.
    let job = bed.job().image(&format!("bundle:{name}"));
    let out = job.run("echo ran-$(id -u)");
    out.expect_ok();
    assert_eq!(out.stdout.trim(), "ran-2001");
    let runs = bed.creates(&job.id);
    assert_eq!(runs.len(), 1);
    assert_eq!(
        runs[0].body["Image"],
        id.as_str(),
        "the job runs by image id: {:?}",
        runs[0].body
    );
    assert!(load_events(&bed, &id).is_empty());
    let list = bundle(&bed, &["list"]);
    list.expect_ok();
    assert!(list.stdout.contains(&name) && list.stdout.contains(&id[..19]));
    bundle(&bed, &["verify", &name]).expect_ok();
}

#[test]
fn from_save_keeps_the_image_and_drops_tags() {
    let _engine = shared();
    let bed = bundle_bed();
    let name = format!("save-{}", next_job_id());
    let tar = bed.path().join("entry-sh.tar");
    docker(&[
        "save",
        "-o",
        &tar.display().to_string(),
        "berth-test/entry-sh:1",
    ])
    .expect_ok();
    bundle(
        &bed,
        &["create", &name, "--from-save", &tar.display().to_string()],
    )
    .expect_ok();
    let m = meta(&bed, &name);
    assert_eq!(
        m["image_id"].as_str().unwrap(),
        image_id("berth-test/entry-sh:1")
    );
    assert_eq!(m["entrypoint"].as_array().unwrap().len(), 1);
    assert_facts_match(&bed, &name);
    // The bundle's manifest names no tag: a load never moves one.
    let listing = Command::new("tar")
        .args(["-xOf"])
        .arg(cache(&bed).join(&name).join("image.tar"))
        .arg("manifest.json")
        .output()
        .unwrap();
    let man: serde_json::Value = serde_json::from_slice(&listing.stdout).unwrap();
    assert!(man[0]["RepoTags"].is_null(), "{man}");
    // ENTRYPOINT /bin/sh is allowed; the job runs.
    bed.job()
        .image(&format!("bundle:{name}"))
        .run("echo ok")
        .expect_ok();
}

#[test]
fn from_export_cold_start_loads_once_and_facts_match() {
    let _engine = shared();
    let bed = bundle_bed();
    let name = format!("exp-{}", next_job_id());
    let (id, _g) = export_bundle(&bed, &name);
    let m = meta(&bed, &name);
    assert_eq!(m["has_shell"].as_bool(), Some(true));
    assert_eq!(m["workdir"].as_str(), Some("/opt/imgwork"));
    let out = bed
        .job()
        .image(&format!("bundle:{name}"))
        .run("echo var=$BUNDLE_VAR");
    out.expect_ok();
    assert!(image_present(&id));
    assert_facts_match(&bed, &name);
    let loads = load_events(&bed, &id);
    assert_eq!(loads.len(), 1, "{loads:?}");
    assert_eq!(loads[0]["decision"], "allow");
    // Warm: no further load.
    bed.job()
        .image(&format!("bundle:{name}"))
        .run("true")
        .expect_ok();
    assert_eq!(load_events(&bed, &id).len(), 1);
    // Re-creating from the same export gives the same id (content-addressed).
    let again = format!("{name}-b");
    let src = meta(&bed, &name)["source"]
        .as_str()
        .unwrap()
        .trim_start_matches("export:")
        .to_string();
    let label = {
        let v = inspect(&id);
        format!(
            "LABEL berth.test={}",
            v["Config"]["Labels"]["berth.test"].as_str().unwrap()
        )
    };
    bundle(
        &bed,
        &[
            "create",
            &again,
            "--from-export",
            &src,
            "--change",
            "WORKDIR /opt/imgwork",
            "--change",
            "ENV BUNDLE_VAR=from-bundle",
            "--change",
            "CMD [\"/bin/sh\"]",
            "--change",
            &label,
        ],
    )
    .expect_ok();
    assert_eq!(meta_id(&bed, &again), id);
}

/// Flip one byte of image.tar at `offset` (the bundle stays root-owned).
fn flip(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0x20;
    f.write_all_at(&b, offset).unwrap();
}

/// Offset in `path` of the first occurrence of `needle` after `from`.
fn find(path: &Path, needle: &[u8], from: usize) -> u64 {
    let data = std::fs::read(path).unwrap();
    (from
        + data[from..]
            .windows(needle.len())
            .position(|w| w == needle)
            .unwrap_or_else(|| panic!("{needle:?} not in {}", path.display()))) as u64
}

#[test]
fn corrupt_layer_is_refused_and_nothing_stays_loaded() {
    let _engine = shared();
    let bed = bundle_bed();
    let name = format!("badlayer-{}", next_job_id());
    let (id, _g) = export_bundle(&bed, &name);
    let tar = cache(&bed).join(&name).join("image.tar");
    // A byte in the middle of the layer (busybox's text).
    let len = std::fs::metadata(&tar).unwrap().len();
    flip(&tar, len / 2);
    let job = bed.job().image(&format!("bundle:{name}"));
    let out = job.run("true");
    out.expect_code(78);
    assert!(out.stderr.contains(&name), "{}", out.stderr);
    assert!(!image_present(&id), "no image is left loaded");
    assert!(bed.creates(&job.id).is_empty());
    let loads = load_events(&bed, &id);
    assert_eq!(loads.len(), 1);
    assert_eq!(loads[0]["decision"], "error");
    // verify finds it too.
    bundle(&bed, &["verify", &name]).expect_code(78);
}

#[test]
fn corrupt_config_is_refused_before_loading() {
    let _engine = shared();
    let bed = bundle_bed();
    let name = format!("badcfg-{}", next_job_id());
    let (id, _g) = export_bundle(&bed, &name);
    let tar = cache(&bed).join(&name).join("image.tar");
    // The config JSON comes after the layer: flip a byte of its WorkingDir.
    let len = std::fs::metadata(&tar).unwrap().len() as usize;
    let at = find(&tar, b"/opt/imgwork", len - 8192);
    flip(&tar, at + 1);
    let before = docker(&["images", "-qa", "--no-trunc"]).stdout;
    let job = bed.job().image(&format!("bundle:{name}"));
    let out = job.run("true");
    out.expect_code(78);
    assert!(
        out.stderr.contains("config") && out.stderr.contains(&id),
        "{}",
        out.stderr
    );
    assert!(!image_present(&id));
    // Refused before the engine saw anything: no new image at all.
    let after = docker(&["images", "-qa", "--no-trunc"]).stdout;
    for l in after.lines() {
        assert!(
            before.contains(l) || !l.contains(&id[7..19]),
            "new image {l} after a refused load"
        );
    }
    bundle(&bed, &["verify", &name]).expect_code(78);
}

#[test]
fn unsafe_owner_or_mode_is_refused() {
    let _engine = shared();
    let bed = bundle_bed();
    let name = format!("own-{}", next_job_id());
    bundle(&bed, &["create", &name, "--from-image", IMAGE]).expect_ok();
    let dir = cache(&bed).join(&name);
    let job = || bed.job().image(&format!("bundle:{name}"));
    // Owned by a user.
    std::os::unix::fs::chown(&dir, Some(ALICE_UID), None).unwrap();
    let out = job().run("true");
    out.expect_code(78);
    assert!(
        out.stderr.contains(&dir.display().to_string()),
        "{}",
        out.stderr
    );
    std::os::unix::fs::chown(&dir, Some(0), None).unwrap();
    job().run("true").expect_ok();
    // Group-writable bundle, then bundle.toml, then the cache root.
    for p in [dir.clone(), dir.join("bundle.toml"), cache(&bed)] {
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode | 0o020)).unwrap();
        let out = job().run("true");
        out.expect_code(78);
        assert!(
            out.stderr.contains(&p.display().to_string()),
            "{}",
            out.stderr
        );
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    // An owner named by the policy is trusted.
    std::os::unix::fs::chown(&dir, Some(ALICE_UID), None).unwrap();
    let mut bed2 = bed;
    set(&mut bed2.policy, "bundles.owner", ALICE);
    bed2.write_policy();
    bed2.job()
        .image(&format!("bundle:{name}"))
        .run("true")
        .expect_ok();
}

#[test]
fn half_written_bundle_is_invisible_and_gc_removes_it() {
    let _engine = shared();
    let bed = bundle_bed();
    let name = format!("half-{}", next_job_id());
    bundle(&bed, &["create", &name, "--from-image", IMAGE]).expect_ok();
    // A writer that crashed: a complete-looking temp sibling of another name.
    let ghost = format!("ghost-{}", next_job_id());
    let tmp = cache(&bed).join(format!(".tmp-{ghost}-abc123"));
    Command::new("cp")
        .arg("-a")
        .arg(cache(&bed).join(&name))
        .arg(&tmp)
        .status()
        .unwrap();
    let text = std::fs::read_to_string(tmp.join("bundle.toml"))
        .unwrap()
        .replace(
            &format!("name = \"{name}\""),
            &format!("name = \"{ghost}\""),
        );
    std::fs::write(tmp.join("bundle.toml"), text).unwrap();
    bed.job()
        .image(&format!("bundle:{ghost}"))
        .run("true")
        .expect_denied(&[&ghost]);
    bed.job()
        .image(&format!("bundle:.tmp-{ghost}-abc123"))
        .run("true")
        .expect_code(64);
    let list = bundle(&bed, &["list"]);
    assert!(!list.stdout.contains(&ghost), "{}", list.stdout);
    // gc leaves young leftovers (a writer may be running), removes old ones.
    bundle(&bed, &["gc", "--cache-only"]).expect_ok();
    assert!(tmp.exists());
    let out = bundle(&bed, &["gc", "--cache-only", "--min-age", "0"]);
    out.expect_ok();
    assert!(!tmp.exists(), "{}", out.stdout);
    assert!(cache(&bed).join(&name).exists());
}

#[test]
fn eight_concurrent_cold_starts_load_once() {
    let _engine = shared();
    let bed = bundle_bed();
    let name = format!("conc-{}", next_job_id());
    let (id, _g) = export_bundle(&bed, &name);
    let jobs: Vec<_> = (0..8)
        .map(|_| bed.job().image(&format!("bundle:{name}")))
        .collect();
    let running: Vec<_> = jobs.iter().map(|j| j.spawn("echo hello")).collect();
    for r in running {
        let out = r.finish(Duration::from_secs(180));
        out.expect_ok();
        assert_eq!(out.stdout.trim(), "hello");
    }
    let loads = load_events(&bed, &id);
    assert_eq!(loads.len(), 1, "docker load ran exactly once: {loads:?}");
    assert_eq!(loads[0]["decision"], "allow");
    for j in &jobs {
        assert_eq!(bed.creates(&j.id).len(), 1);
        bed.assert_no_leaks(&j.id);
    }
}

#[test]
fn a_stolen_tag_does_not_change_what_runs() {
    let _engine = shared();
    let bed = bundle_bed();
    let name = format!("steal-{}", next_job_id());
    let (id, _g) = export_bundle(&bed, &name);
    bed.job()
        .image(&format!("bundle:{name}"))
        .run("true")
        .expect_ok();
    // Someone loads another image (no /bin/sh) under the bundle's tag.
    let tag = format!("berth-bundle/{}:{}", name.to_ascii_lowercase(), &id[7..]);
    let thief = bed.path().join("thief.tar");
    docker(&["tag", "berth-test/noshell:1", &tag]).expect_ok();
    docker(&["save", "-o", &thief.display().to_string(), &tag]).expect_ok();
    docker(&["rmi", &tag]).expect_ok();
    docker(&["load", "-i", &thief.display().to_string()]).expect_ok();
    assert_eq!(image_id(&tag), image_id("berth-test/noshell:1"));
    let job = bed.job().image(&format!("bundle:{name}"));
    let out = job.run("echo var=$BUNDLE_VAR");
    let _ = docker(&["rmi", &tag]);
    out.expect_ok();
    assert_eq!(out.stdout.trim(), "var=from-bundle");
    let runs = bed.creates(&job.id);
    assert_eq!(runs[0].body["Image"], id.as_str(), "{:?}", runs[0].body);
    assert_eq!(load_events(&bed, &id).len(), 1);
}

#[test]
fn rm_and_gc_remove_only_berths_own_images() {
    let _engine = ENGINE.write().unwrap_or_else(|e| e.into_inner());
    let bed = bundle_bed();
    let name = format!("gc-{}", next_job_id());
    let (id, _g) = export_bundle(&bed, &name);
    let kept = format!("kept-{}", next_job_id());
    bundle(&bed, &["create", &kept, "--from-image", IMAGE]).expect_ok();
    bed.job()
        .image(&format!("bundle:{name}"))
        .run("true")
        .expect_ok();
    bed.job()
        .image(&format!("bundle:{kept}"))
        .run("true")
        .expect_ok();
    assert!(image_present(&id));
    bundle(&bed, &["rm", &name]).expect_ok();
    assert!(!cache(&bed).join(&name).exists());
    bed.job()
        .image(&format!("bundle:{name}"))
        .run("true")
        .expect_code(77);
    let out = bundle(&bed, &["gc"]);
    out.expect_ok();
    assert!(!image_present(&id), "{}", out.stdout);
    // The node's own image (same id as bundle `kept`) is untouched.
    assert!(image_present(IMAGE));
    assert!(image_present("berth-test/noshell:1"));
}

#[test]
fn republish_replaces_and_create_refuses_bad_input() {
    let _engine = shared();
    let bed = bundle_bed();
    let name = format!("rep-{}", next_job_id());
    bundle(&bed, &["create", &name, "--from-image", IMAGE]).expect_ok();
    bundle(
        &bed,
        &["create", &name, "--from-image", "berth-test/entry-sh:1"],
    )
    .expect_ok();
    assert_eq!(meta_id(&bed, &name), image_id("berth-test/entry-sh:1"));
    let left: Vec<_> = std::fs::read_dir(cache(&bed))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "leftovers: {left:?}");
    // Bad names, a rootfs given as a save, --change on a save.
    bundle(&bed, &["create", "../x", "--from-image", IMAGE]).expect_code(64);
    let exp = export_tar(&bed, IMAGE);
    let e = exp.display().to_string();
    bundle(&bed, &["create", "x1", "--from-save", &e]).expect_code(64);
    bundle(
        &bed,
        &[
            "create",
            "x2",
            "--from-image",
            IMAGE,
            "--change",
            "WORKDIR /x",
        ],
    )
    .expect_code(64);
    // A tar with a hostile entry.
    let evil = bed.path().join("evil.tar");
    let st = Command::new("tar")
        .args(["-cf"])
        .arg(&evil)
        .args(["-P", "--transform", "s,^,../../,", "-C", "/etc", "hostname"])
        .status()
        .unwrap();
    assert!(st.success());
    let out = bundle(
        &bed,
        &["create", "x3", "--from-export", &evil.display().to_string()],
    );
    out.expect_code(64);
    assert!(out.stderr.contains(".."), "{}", out.stderr);
    assert!(!cache(&bed).join("x3").exists());
}

#[test]
fn a_failed_load_never_removes_another_bundles_image() {
    // Issue 17 ("No such image" in a_stolen_tag_does_not_change_what_runs):
    // a load that fails cleaned up every image new since it began, so a
    // bundle loaded meanwhile by another job lost its image before running.
    let _engine = shared();
    let bed = bundle_bed();
    let bad = format!("racebad-{}", next_job_id());
    let (_bad_id, _bg) = export_bundle(&bed, &bad);
    let tar = cache(&bed).join(&bad).join("image.tar");
    let len = std::fs::metadata(&tar).unwrap().len();
    flip(&tar, len / 2);
    let goods: Vec<(String, String, ImageGuard)> = (0..4)
        .map(|i| {
            let n = format!("racegood{i}-{}", next_job_id());
            let (id, g) = export_bundle(&bed, &n);
            (n, id, g)
        })
        .collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failures = std::thread::scope(|s| {
        let st = stop.clone();
        let bed = &bed;
        let bad = &bad;
        let h = s.spawn(move || {
            let mut n = 0;
            while !st.load(std::sync::atomic::Ordering::SeqCst) && n < 200 {
                bed.job()
                    .image(&format!("bundle:{bad}"))
                    .run("true")
                    .expect_code(78);
                n += 1;
            }
            n
        });
        for (name, id, _) in &goods {
            let out = bed.job().image(&format!("bundle:{name}")).run("true");
            out.expect_ok();
            // Later failures of the bad bundle's load leave it alone too.
            std::thread::sleep(Duration::from_millis(300));
            assert!(image_present(id), "bundle {name}'s image {id} was removed");
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        h.join().unwrap()
    });
    assert!(failures > 0);
    for (name, id, _) in &goods {
        assert!(image_present(id), "bundle {name}'s image {id} was removed");
        bed.job()
            .image(&format!("bundle:{name}"))
            .run("echo ran")
            .expect_ok();
    }
}
