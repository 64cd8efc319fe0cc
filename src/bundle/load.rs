//! Loading a bundle on a node, once.
//!
//! 1. Hit: one `image inspect` of the recorded id; nothing is read from the
//!    cache, whatever the bundle's size.
//! 2. Miss: take an exclusive `flock` on `<lock_dir>/<image id>.lock`
//!    (node-local; the kernel releases it when a loader dies), and look
//!    again: a job that waited finds the image another job loaded.
//! 3. Pre-check: the sha256 of the config inside image.tar must be the
//!    image id (the config pins every layer's diff_id, which the engine's
//!    load verifies).
//! 4. Stream image.tar once into `POST /images/load`.
//! 5. Post-check: the engine must hold exactly that id; anything else the
//!    load created is removed and the job refused.
//! 6. Tag the image `berth-bundle/<name>:<id hex>`: the mark `berth bundle
//!    gc` uses to find berth's own loads (tags are never used to run).

use super::cache::{Bundle, Cache};
use super::tarinspect::{self, Depth, Layout};
use crate::core::error::{Error, Result};
use crate::core::policy::Policy;
use crate::engine::Engine;
use std::collections::BTreeSet;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::Path;

pub use crate::core::plan::BUNDLE_TAG_REPO as TAG_REPO;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The engine had the image: one inspect.
    Hit,
    /// Another job loaded it while this one waited for the lock.
    Waited,
    /// This job loaded it.
    Loaded { bytes: u64 },
}

/// Whether the engine holds exactly this image id.
pub fn present(engine: &Engine, id: &str) -> Result<bool> {
    Ok(engine
        .inspect_image(id)?
        .is_some_and(|v| v.get("Id").and_then(|x| x.as_str()) == Some(id)))
}

/// The repository part of berth's tag for a bundle: a docker-valid
/// lowercase name derived from the bundle name.
pub fn tag_repo(name: &str) -> String {
    let mut s = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            s.push(c.to_ascii_lowercase());
        } else if !s.ends_with('-') && !s.is_empty() {
            s.push('-');
        }
    }
    let s = s.trim_end_matches('-');
    format!("{TAG_REPO}/{}", if s.is_empty() { "x" } else { s })
}

/// An exclusive lock on a node-local file, released on drop (or death).
pub struct Lock {
    _file: std::fs::File,
}

pub fn lock(dir: &Path, id: &str) -> Result<Lock> {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    if !crate::core::facts::valid_image_id(id) {
        return Err(Error::Internal(format!("lock for invalid id {id:?}")));
    }
    if std::fs::symlink_metadata(dir).is_err() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| {
                Error::Config(format!(
                    "cannot create bundles.lock_dir {}: {e}",
                    dir.display()
                ))
            })?;
    }
    let md = std::fs::symlink_metadata(dir)
        .map_err(|e| Error::Config(format!("bundles.lock_dir {}: {e}", dir.display())))?;
    let me = nix::unistd::geteuid().as_raw();
    if !md.is_dir() || (md.uid() != 0 && md.uid() != me) || md.mode() & 0o022 != 0 {
        return Err(Error::Config(format!(
            "bundles.lock_dir {} must be a directory owned by root and not writable by others (chown root: ; chmod 0700)",
            dir.display()
        )));
    }
    let file = crate::sys::process::open_locked(&dir.join(format!("{hex}.lock")))?;
    Ok(Lock { _file: file })
}

fn corrupt(b: &Bundle, why: impl std::fmt::Display) -> Error {
    Error::Config(format!(
        "bundle {} is refused: {why}; run berth bundle verify {} and recreate it",
        b.name, b.name
    ))
}

/// Make sure the engine holds `id`, loading bundle `b` if not.
pub fn ensure(
    engine: &Engine,
    policy: &Policy,
    cache: &Cache,
    b: &Bundle,
    id: &str,
    tick: &mut dyn FnMut(u64, u64),
) -> Result<Outcome> {
    if present(engine, id)? {
        return Ok(Outcome::Hit);
    }
    let _lock = lock(&policy.bundles.lock_dir, id)?;
    if present(engine, id)? {
        return Ok(Outcome::Waited);
    }
    let f = b.open_tar(cache.owner)?;
    let size = f
        .metadata()
        .map_err(|e| Error::internal("stat image.tar", e))?
        .len();
    let t = tarinspect::inspect(&f, Depth::Config).map_err(|e| corrupt(b, e))?;
    if t.layout != Layout::Save || t.image_id.as_deref() != Some(id) {
        return Err(corrupt(
            b,
            format!(
                "the image config in image.tar has digest {}, not the recorded image id {id}",
                t.image_id.as_deref().unwrap_or("(none)")
            ),
        ));
    }
    let before: BTreeSet<String> = engine.image_ids()?.into_iter().collect();
    let reported = engine.load(&f, size, tick)?;
    let cleanup = |why: String| -> Error {
        let mut ids: Vec<String> = reported
            .iter()
            .flatten()
            .filter(|r| crate::core::facts::valid_image_id(r))
            .cloned()
            .collect();
        // Only what this load reported, and the id it was to bring: any
        // other image new since `before` may be another bundle's, loaded
        // meanwhile by a concurrent job that is about to run it (removing
        // it made that job fail with "No such image").
        ids.push(id.to_string());
        for x in ids.iter().collect::<BTreeSet<_>>() {
            if !before.contains(x.as_str()) {
                if let Err(e) = engine.remove_image(x, true) {
                    log::warn!("cannot remove image {x} loaded from bundle {}: {e}", b.name);
                }
            }
        }
        corrupt(b, why)
    };
    let reported = match &reported {
        Ok(r) => r.clone(),
        Err(msg) => return Err(cleanup(format!("the engine refused image.tar ({msg})"))),
    };
    let others: Vec<&String> = reported.iter().filter(|r| r.as_str() != id).collect();
    if !others.is_empty() || !present(engine, id)? {
        return Err(cleanup(format!(
            "loading it gave {reported:?}, not exactly the recorded image id {id}"
        )));
    }
    let hex = &id[7..];
    if let Err(e) = engine.tag_image(id, &tag_repo(&b.name), hex) {
        log::warn!("cannot tag {id} for bundle {}: {e}", b.name);
    }
    Ok(Outcome::Loaded { bytes: size })
}

/// Untag this node's images that berth loaded for bundles whose image id
/// is not in `keep`. An image goes only when berth's tag was its last
/// reference and no container uses it. Returns the tags removed.
pub fn gc_images(engine: &Engine, keep: &BTreeSet<String>) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (id, tags) in engine.images()? {
        for t in tags {
            let Some((repo, hex)) = t.rsplit_once(':') else {
                continue;
            };
            if !repo.starts_with(&format!("{TAG_REPO}/")) {
                continue;
            }
            // Only berth's own mark: the tag names the image's own id.
            if id != format!("sha256:{hex}") || keep.contains(&id) {
                continue;
            }
            match engine.remove_image(&t, false) {
                Ok(_) => out.push(t),
                Err(e) => log::warn!("cannot remove {t}: {e}"),
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_repos_are_docker_names() {
        assert_eq!(
            tag_repo("PyTorch-2.1_cuda"),
            "berth-bundle/pytorch-2-1-cuda"
        );
        assert_eq!(tag_repo("a._-b"), "berth-bundle/a-b");
        for n in ["x", "A9", "a-", "z.z"] {
            crate::core::image::ImageRef::parse(&format!("{}:{}", tag_repo(n), "a".repeat(64)))
                .unwrap();
        }
    }

    #[test]
    fn lock_is_exclusive_and_released() {
        let d = tempfile::tempdir().unwrap();
        let id = format!("sha256:{}", "b".repeat(64));
        let l = lock(d.path(), &id).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let p = d.path().to_path_buf();
        let id2 = id.clone();
        let h = std::thread::spawn(move || {
            let _l = lock(&p, &id2).unwrap();
            tx.send(()).unwrap();
        });
        assert!(rx
            .recv_timeout(std::time::Duration::from_millis(200))
            .is_err());
        drop(l);
        rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
        h.join().unwrap();
    }
}
