//! Learning an image's facts from the engine, once per image id, and the
//! node's cache of them.

use crate::core::error::{Denial, Error, Result};
use crate::core::facts::{valid_image_id, ImageFacts};
use crate::core::policy::{Policy, Pull};
use crate::engine::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Facts cached on the node by image id. Only a root-owned entry is
/// trusted; a miss costs one probe (~70 ms) and is written back when berth
/// runs as root.
pub struct FactsCache {
    dir: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct Cached {
    has_shell: bool,
}

impl FactsCache {
    pub fn new(dir: &Path) -> FactsCache {
        FactsCache {
            dir: dir.to_path_buf(),
        }
    }

    fn file(&self, id: &str) -> Option<PathBuf> {
        valid_image_id(id).then(|| self.dir.join(format!("{}.json", &id[7..])))
    }

    pub fn get(&self, id: &str) -> Option<bool> {
        let f = self.file(id)?;
        let md = std::fs::symlink_metadata(&f).ok()?;
        if md.uid() != 0 || md.mode() & 0o022 != 0 || !md.is_file() {
            return None;
        }
        let c: Cached = serde_json::from_slice(&std::fs::read(&f).ok()?).ok()?;
        Some(c.has_shell)
    }

    pub fn put(&self, id: &str, has_shell: bool) {
        let Some(f) = self.file(id) else { return };
        if !crate::sys::is_root() {
            return;
        }
        let write = || -> std::io::Result<()> {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&self.dir)?;
            let tmp = self
                .dir
                .join(format!(".{}.{}", std::process::id(), &id[7..]));
            std::fs::write(
                &tmp,
                serde_json::to_vec(&Cached { has_shell }).unwrap_or_default(),
            )?;
            std::fs::rename(&tmp, &f)
        };
        if let Err(e) = write() {
            log::info!("cannot cache facts of {id} in {}: {e}", self.dir.display());
        }
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Facts from an `image inspect` reply, `has_shell` still unknown.
pub fn from_inspect(v: &Value) -> Result<ImageFacts> {
    let id = v
        .get("Id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if !valid_image_id(&id) {
        return Err(Error::Internal(format!("engine reported image id {id:?}")));
    }
    let cfg = v.get("Config");
    let s = |k: &str| {
        cfg.and_then(|c| c.get(k))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    Ok(ImageFacts {
        id,
        entrypoint: strings(cfg.and_then(|c| c.get("Entrypoint"))),
        cmd: strings(cfg.and_then(|c| c.get("Cmd"))),
        workdir: s("WorkingDir"),
        user: s("User"),
        has_shell: false,
        volumes: crate::core::facts::volume_keys(cfg.and_then(|c| c.get("Volumes"))),
        owner: None,
    })
}

/// Learn the facts of a registry image on this node: one inspect over the
/// API socket, a pull if policy allows, and a shell probe on a cache miss.
pub fn gather(
    engine: &Engine,
    policy: &Policy,
    reference: &str,
    nonce: &str,
) -> Result<ImageFacts> {
    if policy.images.pull == Pull::Always {
        engine.pull(reference)?;
    }
    let v = match engine.inspect_image(reference)? {
        Some(v) => v,
        None if policy.images.pull == Pull::Missing => {
            engine.pull(reference)?;
            engine.inspect_image(reference)?.ok_or_else(|| {
                Error::Unavailable(format!("image {reference} is still missing after a pull"))
            })?
        }
        None => {
            return Err(Denial::new(
                "images.pull",
                reference,
                format!("image {reference} is not on this node, and this site does not pull images (images.pull = never)"),
                "ask your administrator to load it, or use a bundle (LSB_CONTAINER_IMAGE=bundle:NAME)",
            )
            .into())
        }
    };
    complete(engine, policy, from_inspect(&v)?, nonce)
}

/// Fill in `has_shell` from the cache, or probe the image once.
pub fn complete(
    engine: &Engine,
    policy: &Policy,
    mut f: ImageFacts,
    nonce: &str,
) -> Result<ImageFacts> {
    let cache = FactsCache::new(&policy.images.facts_cache);
    f.has_shell = match cache.get(&f.id) {
        Some(b) => b,
        None => {
            let b = engine.probe_shell(&f.id, &format!("berth-probe-{nonce}"))?;
            cache.put(&f.id, b);
            b
        }
    };
    Ok(f)
}
