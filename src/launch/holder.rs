//! The holders of MPI steps' shared namespaces on this node (SPEC §14).
//!
//! The ranks of one step on one node join one holder container's IPC and
//! PID namespaces, never one another's: a namespace dies with its first
//! process, and a rank that finished first would take the others with it.
//! The first rank of a step here creates the holder (as planned by
//! `core::plan`), the last one to end removes it; the count lives in the
//! broker, and a holder a crashed broker left is removed by its orphan
//! sweep (it carries the broker's label like every container it runs).

use crate::core::cgroup::Placement;
use crate::core::error::{Error, Result};
use crate::core::plan::spec::ContainerSpec;
use crate::engine::Engine;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

/// Holder name → ranks of its step running on this node, and the cgroup
/// directories the engine made for the holder (removed with it, as a
/// rank's are: runc leaves the parents it creates).
#[derive(Default)]
pub struct Holders(Mutex<HashMap<String, (usize, Vec<PathBuf>)>>);

/// A rank's hold on its step's holder; dropping it lets the holder go.
pub struct Hold<'a> {
    holders: &'a Holders,
    engine: &'a Engine,
    name: String,
}

impl Holders {
    /// Count one more rank of `spec`'s step, creating and starting the
    /// holder for the first. Under the lock: the step's other ranks here
    /// wait for the holder they join, and none can see it half made.
    /// `placement` is the rank's: the holder lives in its step's cgroup,
    /// whose device rules are prepared as the rank's are.
    pub fn hold<'a>(
        &'a self,
        engine: &'a Engine,
        spec: &ContainerSpec,
        placement: Option<&Placement>,
    ) -> Result<Hold<'a>> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (n, mut made) = m.remove(&spec.name).unwrap_or_default();
        if n == 0 {
            // One of an earlier run of this name (a broker stopped mid-step
            // before its sweep): never joined by this step's ranks.
            if matches!(engine.inspect_container(&spec.name), Ok(Some(_))) {
                crate::launch::supervise::destroy(engine, &spec.name);
            }
            // docker's `c *:* m` under a job that denies GPUs (Placement::mknod).
            if let (Some(p), Some(parent)) = (placement, &spec.cgroup_parent) {
                crate::sys::devices::unmask_mknod(parent, &p.mknod).map_err(|e| {
                    Error::Internal(format!(
                        "the step's device cgroup {parent} cannot be prepared for its MPI holder: {e}"
                    ))
                })?;
            }
            made = match (placement, &spec.cgroup_parent) {
                (Some(p), Some(parent)) => crate::sys::cgroup::missing_dirs(p.job.version, parent),
                _ => Vec::new(),
            };
            let id = engine.create(&spec.name, &spec.create_body(&[])).map_err(|e| {
                crate::sys::cgroup::remove_dirs(&made);
                Error::Unavailable(format!(
                    "cannot create {}, the holder of the MPI step's shared memory on this node: {e}",
                    spec.name
                ))
            })?;
            if let Err(e) = engine.start(&id) {
                crate::launch::supervise::destroy(engine, &spec.name);
                crate::sys::cgroup::remove_dirs(&made);
                return Err(Error::Unavailable(format!(
                    "cannot start {}, the holder of the MPI step's shared memory on this node: {e}",
                    spec.name
                )));
            }
        }
        m.insert(spec.name.clone(), (n + 1, made));
        Ok(Hold {
            holders: self,
            engine,
            name: spec.name.clone(),
        })
    }
}

impl Holders {
    /// Remove every holder (the broker stopping: its ranks were killed).
    pub fn destroy_all(&self, engine: &Engine) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for (name, (_, made)) in m.drain() {
            crate::launch::supervise::destroy(engine, &name);
            crate::sys::cgroup::remove_dirs(&made);
        }
    }
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        let mut m = self.holders.0.lock().unwrap_or_else(|e| e.into_inner());
        let Some((n, made)) = m.remove(&self.name) else {
            return;
        };
        if n <= 1 {
            crate::launch::supervise::destroy(self.engine, &self.name);
            crate::sys::cgroup::remove_dirs(&made);
        } else {
            m.insert(self.name.clone(), (n - 1, made));
        }
    }
}
