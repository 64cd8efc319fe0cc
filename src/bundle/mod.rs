//! Bundles (SPEC §6): images kept as tar files in a shared cache directory,
//! loaded on a node on first use and run by image id.
//!
//! * [`tarinspect`]: read facts from a tar without loading it (pure).
//! * [`create`]: `berth bundle create` from an image, a save tar or an
//!   export tar; an export becomes a one-layer save tar, so every bundle is
//!   content-addressed by its config digest.
//! * [`cache`]: safe-path checks, list, atomic publish, rm, leftovers.
//! * [`load`]: the job-start path: one inspect on a hit; otherwise a
//!   per-image flock, a pre-check of the config digest, one streamed load,
//!   and a post-check of the id the engine holds.

pub mod cache;
pub mod create;
pub mod load;
pub mod tarinspect;

use crate::audit::{Audit, Record};
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
}

/// The facts of `bundle:NAME` for the planner, from its bundle.toml (the
/// cache and the bundle are checked first: exit 78 naming the path).
pub fn facts(policy: &Policy, name: &str) -> Result<ImageFacts> {
    let cache = Cache::open(policy)?;
    Ok(cache.get(name)?.facts())
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
    ensure(engine, policy, name, Some(id), record, audit).map(|_| ())
}

fn ensure(
    engine: &Engine,
    policy: &Policy,
    name: &str,
    id: Option<&str>,
    record: &Record,
    audit: &mut dyn FnMut(&Record),
) -> Result<load::Outcome> {
    let cache = Cache::open(policy)?;
    let b = cache.get(name)?;
    let id = id.unwrap_or(&b.meta.image_id).to_string();
    let started = std::time::Instant::now();
    let r = load::ensure(engine, policy, &cache, &b, &id);
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

/// `berth bundle …`
pub fn main(policy_path: &Path, cmd: &BundleCommand) -> Result<i32> {
    let policy = Policy::load(policy_path)?;
    match cmd {
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
            let o = ensure(&engine, &policy, name, None, &rec, &mut |r| audit.record(r))?;
            let us = t.elapsed().as_micros();
            match o {
                load::Outcome::Hit => println!("bundle {name}: already loaded ({us} us)"),
                load::Outcome::Waited => {
                    println!("bundle {name}: loaded by another job ({us} us)")
                }
                load::Outcome::Loaded { bytes } => {
                    println!("bundle {name}: loaded {bytes} bytes ({us} us)")
                }
            }
            Ok(0)
        }
    }
}

fn human(n: u64) -> String {
    let mut v = n as f64;
    for u in ["B", "KiB", "MiB", "GiB", "TiB"] {
        if v < 1024.0 || u == "TiB" {
            return if u == "B" {
                format!("{n} B")
            } else {
                format!("{v:.1} {u}")
            };
        }
        v /= 1024.0;
    }
    unreachable!()
}

fn list(policy: &Policy, json: bool) -> Result<i32> {
    let cache = Cache::open(policy)?;
    let all = cache.list()?;
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
    println!("{:<32} {:>10}  {:<19}  CREATED", "NAME", "SIZE", "IMAGE ID");
    for (n, b) in &all {
        match b {
            Ok(b) => println!(
                "{:<32} {:>10}  {:<19}  {}",
                n,
                human(b.meta.size),
                &b.meta.image_id[..19.min(b.meta.image_id.len())],
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
    for (n, b) in cache.list()? {
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
