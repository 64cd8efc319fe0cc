//! Bundles (SPEC §6): images kept as tar files in a shared cache directory,
//! loaded on a node on first use and run by image id.
//!
//! * [`tarinspect`]: read facts from a tar without loading it (pure).
//! * [`create`]: `berth bundle create` from an image, a save tar or an
//!   export tar; an export becomes a one-layer save tar, so every bundle is
//!   content-addressed by its config digest.
//! * [`cache`]: safe-path checks, list, atomic publish, rm, leftovers.
//! * [`serve`]: users' `push`, `list` and `rm` in the broker (SPEC §15).
//! * [`progress`]: progress of long work on a terminal.
//! * [`load`]: the job-start path: one inspect on a hit; otherwise a
//!   per-image flock, a pre-check of the config digest, one streamed load,
//!   and a post-check of the id the engine holds.

pub mod cache;
pub mod create;
pub mod load;
pub mod progress;
pub mod serve;
pub mod tarinspect;

use crate::audit::{Audit, Record};
use crate::broker::proto;
use crate::cli::BundleCommand;
use crate::core::error::{Error, Result};
use crate::core::facts::ImageFacts;
use crate::core::plan::LaunchPlan;
use crate::core::policy::Policy;
use crate::engine::Engine;
use cache::Cache;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// `bundle.toml`: what `berth bundle create` learnt, trusted because the
/// cache is root-owned and checked on every read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub name: String,
    /// Always `docker-save`: image.tar is a `docker save` tar (an export is
    /// converted at create time).
    pub format: String,
    /// `image:REF`, `save:PATH` or `export:PATH`: where the tar came from.
    pub source: String,
    /// `sha256:<hex>` of the image config in image.tar: the id the engine
    /// gives the loaded image and the id jobs run.
    pub image_id: String,
    /// SHA-256 (hex) and size of image.tar, checked at publish and by
    /// `berth bundle verify`.
    pub sha256: String,
    #[serde(default)]
    pub blake3: String,
    pub size: u64,
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    #[serde(default)]
    pub workdir: String,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub user: String,
    /// The image's declared VOLUMEs.
    #[serde(default)]
    pub volumes: Vec<String>,
    pub has_shell: bool,
    /// RFC 3339 UTC.
    pub created: String,
    pub created_by: String,
    #[serde(default)]
    pub berth_version: String,
    /// A user's bundle (SPEC §15): who pushed it and whom it is shared
    /// with. Absent for site bundles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<crate::core::share::Owner>,
}

/// The facts of `bundle:NAME` for the planner, from its bundle.toml (the
/// cache and the bundle are checked first: exit 78 naming the path).
/// For another user's bundle that does not exist, the same denial as for
/// one not shared with `user`: a job learns nothing of what others hold.
pub fn facts(policy: &Policy, name: &str, user: &str) -> Result<ImageFacts> {
    let cache = Cache::open(policy)?;
    match (cache.get(name), crate::core::share::parse_key(name)) {
        (Err(Error::Denied(d)), Some(crate::core::share::Key::User(owner, _)))
            if d.rule == "bundles.cache" && owner != user =>
        {
            Err(crate::core::share::not_shared(name, owner, user))
        }
        (r, _) => Ok(r?.facts()),
    }
}

/// Before launching a bundle job: make sure the engine holds the plan's
/// image id, loading the bundle once per node if needed. A load (or a
/// failed one) is recorded as an audit event `load`.
pub fn prepare(
    engine: &Engine,
    policy: &Policy,
    plan: &LaunchPlan,
    record: &Record,
    audit: &mut dyn FnMut(&Record),
) -> Result<()> {
    let (Some(name), Some(id)) = (&plan.image.bundle, &plan.image.id) else {
        return Ok(());
    };
    // A job's load shows no progress: its stderr is the job's log.
    ensure(
        engine,
        policy,
        name,
        Some(id),
        record,
        audit,
        &mut |_, _| {},
    )
    .map(|_| ())
}

fn ensure(
    engine: &Engine,
    policy: &Policy,
    name: &str,
    id: Option<&str>,
    record: &Record,
    audit: &mut dyn FnMut(&Record),
    tick: &mut dyn FnMut(u64, u64),
) -> Result<load::Outcome> {
    let cache = Cache::open(policy)?;
    let b = cache.get(name)?;
    let id = id.unwrap_or(&b.meta.image_id).to_string();
    let started = std::time::Instant::now();
    let r = load::ensure(engine, policy, &cache, &b, &id, tick);
    let mut rec = record.clone();
    rec.event = "load";
    rec.image = Some(format!("bundle:{name}"));
    rec.image_id = Some(id.clone());
    match &r {
        Ok(load::Outcome::Loaded { bytes }) => {
            rec.decision = "allow";
            rec.detail = Some(format!(
                "loaded {bytes} bytes in {} ms",
                started.elapsed().as_millis()
            ));
            audit(&rec);
        }
        Ok(_) => {}
        Err(e) => {
            rec.decision = "error";
            rec.reason = Some(e.to_string());
            audit(&rec);
        }
    }
    r
}

/// `berth bundle …`: users' push, list and rm go through the broker;
/// everything else, and root's list and rm, act on the cache directly.
pub fn main(policy_path: &Path, cmd: &BundleCommand) -> Result<i32> {
    let policy = Policy::load(policy_path)?;
    let root = crate::sys::is_root();
    match cmd {
        BundleCommand::Push(a) if root => Err(Error::Malformed(format!(
            "root publishes the site's bundles with berth bundle create {} --from-save TAR; berth bundle push is for users",
            a.name
        ))),
        BundleCommand::Push(a) => push_client(&policy, a),
        BundleCommand::List { json } if !root => via_broker(
            &policy,
            proto::BundleOp::List { json: *json },
            [0, 1, 2],
            None,
        ),
        BundleCommand::Rm { name } if !root => via_broker(
            &policy,
            proto::BundleOp::Rm { name: name.clone() },
            [0, 1, 2],
            None,
        ),
        _ if !root => Err(Error::Config(
            "this bundle command acts on the shared cache and the node's engine: run it as root (users have push, list and rm)".into(),
        )),
        BundleCommand::Create(a) => create::run(&policy, a),
        BundleCommand::List { json } => list(&policy, *json),
        BundleCommand::Verify { name } => verify(&policy, name),
        BundleCommand::Rm { name } => {
            Cache::open(&policy)?.remove(name)?;
            println!("removed bundle {name}");
            Ok(0)
        }
        BundleCommand::Gc {
            min_age,
            cache_only,
        } => gc(&policy, *min_age, *cache_only),
        BundleCommand::Load { name } => {
            let mut audit = Audit::open(&policy.audit.log)?;
            let engine = Engine::new(&policy.docker.socket);
            let t = std::time::Instant::now();
            let rec = Record::new("load", "allow");
            let mut meter = crate::bundle::progress::Meter::stderr(&format!("loading bundle {name}"));
            let o = ensure(
                &engine,
                &policy,
                name,
                None,
                &rec,
                &mut |r| audit.record(r),
                &mut |d, t| meter.update(d, t),
            )?;
            meter.clear();
            let us = t.elapsed().as_micros();
            match o {
                load::Outcome::Hit => println!("bundle {name}: already loaded ({us} us)"),
                load::Outcome::Waited => {
                    println!("bundle {name}: loaded by another job ({us} us)")
                }
                load::Outcome::Loaded { bytes } => println!(
                    "bundle {name}: loaded {bytes} bytes{}",
                    crate::bundle::progress::rate_suffix(bytes, t.elapsed())
                ),
            }
            Ok(0)
        }
    }
}

/// A user's bundle command through the broker; the answer goes to stdout.
fn via_broker(
    policy: &Policy,
    op: proto::BundleOp,
    fds: [std::os::fd::RawFd; 3],
    meter: Option<&mut crate::bundle::progress::Meter>,
) -> Result<i32> {
    let hello = proto::Hello {
        version: proto::VERSION,
        scheduler: "bundle".into(),
        env: Default::default(),
        cwd: None,
        command: Vec::new(),
        tmp_files: Vec::new(),
        slurm_id: None,
        explain: None,
        bundle: Some(op),
        slurm_task_dir: None,
    };
    let mut none = |_: u64, _: u64| {};
    match meter {
        Some(m) => {
            let mut tick = |d, t| m.update(d, t);
            let r = crate::broker::client::exchange(&policy.broker.socket, &hello, fds, &mut tick);
            m.clear();
            r
        }
        None => crate::broker::client::exchange(&policy.broker.socket, &hello, fds, &mut none),
    }
}

/// `berth bundle push` as a user: open the tar as this user (never a
/// FIFO or a device: refused before the broker is asked), pass it on.
fn push_client(policy: &Policy, a: &crate::cli::BundlePushArgs) -> Result<i32> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let (path, export) = match (&a.from_save, &a.from_export) {
        (Some(p), None) => (p, false),
        (None, Some(p)) => (p, true),
        _ => {
            return Err(Error::Malformed(
                "give one of --from-save TAR or --from-export TAR".into(),
            ))
        }
    };
    // O_NONBLOCK: opening a FIFO must not wait for a writer.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            Error::Malformed(format!(
                "cannot open {} ({e}); push a tar file you can read",
                path.display()
            ))
        })?;
    let dup = f
        .try_clone()
        .map_err(|e| Error::internal("dup the tar", e))?;
    let (f, _) = serve::source_file(dup.into()).map_err(|e| match e {
        Error::Malformed(m) => Error::Malformed(format!("{}: {m}", path.display())),
        e => e,
    })?;
    let mut meter = crate::bundle::progress::Meter::stderr(&format!("pushing {}", a.name));
    via_broker(
        policy,
        proto::BundleOp::Push {
            name: a.name.clone(),
            export,
            changes: a.change.clone(),
            share: a.share.clone(),
        },
        [f.as_raw_fd(), 1, 2],
        Some(&mut meter),
    )
}

fn list(policy: &Policy, json: bool) -> Result<i32> {
    let cache = Cache::open(policy)?;
    let all = cache.list_all()?;
    if json {
        let v: Vec<serde_json::Value> = all
            .iter()
            .map(|(n, b)| match b {
                Ok(b) => serde_json::to_value(&b.meta).unwrap_or_default(),
                Err(e) => serde_json::json!({"name": n, "error": e.to_string()}),
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(0);
    }
    println!(
        "{:<40} {:>10}  {:<19}  {:<16} CREATED",
        "NAME", "SIZE", "IMAGE ID", "SHARE"
    );
    for (n, b) in &all {
        match b {
            Ok(b) => println!(
                "{:<40} {:>10}  {:<19}  {:<16} {}",
                n,
                crate::core::size::approx(b.meta.size),
                &b.meta.image_id[..19.min(b.meta.image_id.len())],
                b.meta
                    .owner
                    .as_ref()
                    .map(|o| o.share.to_string())
                    .unwrap_or_else(|| "site".into()),
                b.meta.created
            ),
            Err(e) => println!("{n:<32} unusable: {e}"),
        }
    }
    Ok(0)
}

fn verify(policy: &Policy, name: &str) -> Result<i32> {
    let cache = Cache::open(policy)?;
    let b = cache.get(name)?;
    let f = b.open_tar(cache.owner)?;
    let mut problems = Vec::new();
    let (sha, b3, size) = create::hash_file(&f)?;
    if size != b.meta.size {
        problems.push(format!("size is {size}, bundle.toml says {}", b.meta.size));
    }
    if sha != b.meta.sha256 {
        problems.push(format!(
            "sha256 is {sha}, bundle.toml says {}",
            b.meta.sha256
        ));
    }
    if !b.meta.blake3.is_empty() && b3 != b.meta.blake3 {
        problems.push(format!(
            "blake3 is {b3}, bundle.toml says {}",
            b.meta.blake3
        ));
    }
    match tarinspect::inspect(&f, tarinspect::Depth::Full) {
        Err(e) => problems.push(format!("image.tar: {e}")),
        Ok(t) => {
            if t.image_id.as_deref() != Some(b.meta.image_id.as_str()) {
                problems.push(format!(
                    "config digest is {:?}, bundle.toml says {}",
                    t.image_id, b.meta.image_id
                ));
            }
            if t.has_shell != b.meta.has_shell {
                problems.push(format!(
                    "has_shell is {}, bundle.toml says {}",
                    t.has_shell, b.meta.has_shell
                ));
            }
            if let Err(e) = tarinspect::verify_layers(&f, &t) {
                problems.push(e.to_string());
            }
        }
    }
    if problems.is_empty() {
        println!("bundle {name}: ok ({} bytes, {})", size, b.meta.image_id);
        Ok(0)
    } else {
        for p in &problems {
            eprintln!("berth: bundle {name}: {p}");
        }
        Err(Error::Config(format!(
            "bundle {name} is corrupt ({} problems); recreate it with berth bundle create",
            problems.len()
        )))
    }
}

fn gc(policy: &Policy, min_age: u64, cache_only: bool) -> Result<i32> {
    let cache = Cache::open(policy)?;
    for p in cache.remove_leftovers(std::time::Duration::from_secs(min_age))? {
        println!("removed leftover {}", p.display());
    }
    if cache_only {
        return Ok(0);
    }
    let mut keep = std::collections::BTreeSet::new();
    // Users' bundles too: their images are loaded like the site's.
    for (n, b) in cache.list_all()? {
        match b {
            Ok(b) => {
                keep.insert(b.meta.image_id);
            }
            Err(e) => {
                // An unreadable bundle might still be in use: keep images.
                eprintln!("berth: bundle {n} is unusable ({e}); keeping loaded images");
                return Err(e);
            }
        }
    }
    let engine = Engine::new(&policy.docker.socket);
    for tag in load::gc_images(&engine, &keep)? {
        println!("removed {tag}");
    }
    Ok(0)
}

/// Seconds since the epoch as RFC 3339 UTC (`2024-05-01T12:00:00Z`).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
