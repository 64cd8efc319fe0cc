//! The holders of MPI steps' shared namespaces on this node (SPEC §14).
//!
//! The ranks of one step on one node join one holder container's IPC and
//! PID namespaces, never one another's: a namespace dies with its first
//! process, and a rank that finished first would take the others with it.
//! The first rank of a step here creates the holder (as planned by
//! `core::plan`), the last one to end removes it; the count lives in the
//! broker, and a holder a crashed broker left is removed by its orphan
//! sweep (it carries the broker's label like every container it runs).
//!
//! Each step has its own entry and lock: the engine calls that make and
//! remove a holder (hundreds of milliseconds) hold up that step's ranks
//! only, never another user's or another step's.

use crate::core::cgroup::Placement;
use crate::core::error::{Error, Result};
use crate::core::plan::spec::ContainerSpec;
use crate::core::plan::LaunchPlan;
use crate::engine::Engine;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

/// The label of a shared container whose per-job directory and pins are
/// those of another name (the plan of the first rank that made it).
pub const DIRS_LABEL: &str = "berth.dirs";

/// Holder name → its step's entry.
#[derive(Default)]
pub struct Holders(Mutex<HashMap<String, Arc<Mutex<Entry>>>>);

/// One step's holder on this node.
#[derive(Default)]
struct Entry {
    /// Ranks of the step running here.
    ranks: usize,
    /// The cgroup directories the engine made for the holder (removed with
    /// it, as a rank's are: runc leaves the parents it creates).
    made: Vec<PathBuf>,
    /// The engine that runs it.
    socket: PathBuf,
    /// Taken out of the map (its holder removed): a rank that found it
    /// there just before looks again.
    gone: bool,
    /// An LSF host container's plan (SPEC §14): its per-job directory and
    /// pins, made with it and removed after it.
    dirs: Option<LaunchPlan>,
}

/// A rank's hold on its step's holder; dropping it lets the holder go.
pub struct Hold<'a> {
    holders: &'a Holders,
    entry: Arc<Mutex<Entry>>,
    name: String,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn unavailable(spec: &ContainerSpec, what: &str, e: impl std::fmt::Display) -> Error {
    if spec.labels.get("berth.role").is_some_and(|r| r == "step") {
        return Error::Unavailable(format!(
            "cannot {what} {}, the MPI step's container on this node that its ranks run in: {e}; requeue the job, or the site sets mpi.ranks = \"container\"",
            spec.name
        ));
    }
    if spec.labels.get("berth.role").is_some_and(|r| r == "host") {
        return Error::Unavailable(format!(
            "cannot {what} {}, the LSF job's container on this host that its blaunch tasks run in: {e}; requeue the job",
            spec.name
        ));
    }
    Error::Unavailable(format!(
        "cannot {what} {}, the holder of the MPI step's shared memory on this node (it runs the job's image's /bin/sh): {e}; requeue the job, or the site sets mpi.ipc = \"private\"",
        spec.name
    ))
}

impl Holders {
    /// Count one more rank of `spec`'s step, creating and starting the
    /// holder for the first. Under the step's lock: its other ranks here
    /// wait for the holder they join, and none can see it half made.
    /// `placement` is the rank's: the holder lives in its step's cgroup,
    /// whose device rules are prepared as the rank's are.
    pub fn hold<'a>(
        &'a self,
        engine: &Engine,
        spec: &ContainerSpec,
        placement: Option<&Placement>,
    ) -> Result<Hold<'a>> {
        self.hold_with(engine, spec, placement, None)
            .map(|(h, _)| h)
    }

    /// An LSF task's hold on its job's container on this host, made from
    /// `plan` (its directory, pins and `task.host_spec`) by the first task.
    pub fn hold_host<'a>(&'a self, engine: &Engine, plan: &LaunchPlan) -> Result<Hold<'a>> {
        let task = plan
            .task
            .as_ref()
            .ok_or_else(|| Error::Internal("not an LSF task".into()))?;
        match self.hold_with(engine, &task.host_spec, plan.placement.as_ref(), Some(plan))? {
            (hold, true) => Ok(hold),
            (_, false) => Err(crate::launch::tasks::differs(plan, &task.host_spec.name)),
        }
    }

    /// An MPI rank's hold on its step's container on this node, made from
    /// `plan` by the step's first rank here: `(hold, true)` when the rank
    /// runs in it, `(hold, false)` when it asks for other settings than
    /// the container was made with (its own GPUs) and so needs a container
    /// of its own, joined to this one's namespaces.
    pub fn hold_rank<'a>(&'a self, engine: &Engine, plan: &LaunchPlan) -> Result<(Hold<'a>, bool)> {
        let task = plan
            .task
            .as_ref()
            .ok_or_else(|| Error::Internal("not an MPI rank".into()))?;
        self.hold_with(engine, &task.host_spec, plan.placement.as_ref(), Some(plan))
    }

    fn hold_with<'a>(
        &'a self,
        engine: &Engine,
        spec: &ContainerSpec,
        placement: Option<&Placement>,
        dirs: Option<&LaunchPlan>,
    ) -> Result<(Hold<'a>, bool)> {
        loop {
            let entry = lock(&self.0).entry(spec.name.clone()).or_default().clone();
            let mut e = lock(&entry);
            if e.gone {
                continue;
            }
            let mut same = true;
            if e.ranks == 0 {
                if let Err(err) = Self::make(engine, spec, placement, dirs, &mut e) {
                    self.forget(&spec.name, &entry, &mut e);
                    return Err(err);
                }
            } else if dirs.is_some() {
                // A task joining the container gets what its first task
                // planned: only if it asks for the same.
                let made = e
                    .dirs
                    .as_ref()
                    .and_then(|p| p.spec.labels.get("berth.shape"));
                same = made == spec.labels.get("berth.shape");
            }
            e.ranks += 1;
            drop(e);
            return Ok((
                Hold {
                    holders: self,
                    entry,
                    name: spec.name.clone(),
                },
                same,
            ));
        }
    }

    fn make(
        engine: &Engine,
        spec: &ContainerSpec,
        placement: Option<&Placement>,
        dirs: Option<&LaunchPlan>,
        e: &mut Entry,
    ) -> Result<()> {
        // One of an earlier run of this name (a broker stopped mid-step
        // before its sweep): never joined by this step's ranks.
        if matches!(engine.inspect_container(&spec.name), Ok(Some(_))) {
            crate::launch::supervise::destroy(engine, &spec.name);
        }
        if let Some(plan) = dirs {
            // What a job's container has: its /tmp, passwd, pinned volumes.
            if plan.job_dir.exists() {
                crate::launch::cleanup(plan);
            }
            crate::launch::prepare(plan)
                .inspect_err(|_| crate::launch::remove_job_dir(&plan.job_dir))?;
            crate::launch::pin(plan).inspect_err(|_| crate::launch::cleanup(plan))?;
        }
        // Named for the step, not for the plan whose per-job directory and
        // pins it uses: the label tells a broker's start-up sweep which to
        // remove with it after a crash.
        let mut labelled;
        let spec = match dirs {
            Some(plan) if plan.name != spec.name => {
                labelled = spec.clone();
                labelled
                    .labels
                    .insert(DIRS_LABEL.to_string(), plan.name.clone());
                &labelled
            }
            _ => spec,
        };
        let made = Self::make_container(engine, spec, placement, e);
        match (made, dirs) {
            (Err(err), Some(plan)) => {
                crate::launch::cleanup(plan);
                Err(err)
            }
            (Err(err), None) => Err(err),
            (Ok(()), dirs) => {
                e.dirs = dirs.cloned();
                Ok(())
            }
        }
    }

    fn make_container(
        engine: &Engine,
        spec: &ContainerSpec,
        placement: Option<&Placement>,
        e: &mut Entry,
    ) -> Result<()> {
        if let (Some(p), Some(parent)) = (placement, &spec.cgroup_parent) {
            // docker's `c *:* m` under a job that denies GPUs (Placement::mknod).
            crate::sys::devices::unmask_mknod(parent, &p.mknod).map_err(|err| {
                Error::Internal(format!(
                    "the step's device cgroup {parent} cannot be prepared for its MPI holder: {err}"
                ))
            })?;
            e.made = crate::sys::cgroup::missing_dirs(p.job.version, parent);
        }
        e.socket = engine.socket().to_path_buf();
        let id = engine
            .create(&spec.name, &spec.create_body(&[]))
            .map_err(|err| {
                crate::sys::cgroup::remove_dirs(&e.made);
                unavailable(spec, "create", err)
            })?;
        if let Err(err) = engine.start(&id) {
            crate::launch::supervise::destroy(engine, &spec.name);
            crate::sys::cgroup::remove_dirs(&e.made);
            return Err(unavailable(spec, "start", err));
        }
        Ok(())
    }

    /// Take a step without ranks out of the map, under its entry's lock.
    fn forget(&self, name: &str, entry: &Arc<Mutex<Entry>>, e: &mut Entry) {
        e.gone = true;
        let mut m = lock(&self.0);
        if m.get(name).is_some_and(|x| Arc::ptr_eq(x, entry)) {
            m.remove(name);
        }
    }

    /// Remove every holder (the broker stopping: its ranks were killed).
    pub fn destroy_all(&self) {
        let entries: Vec<(String, Arc<Mutex<Entry>>)> = lock(&self.0).drain().collect();
        for (name, entry) in entries {
            let mut e = lock(&entry);
            e.gone = true;
            if e.ranks > 0 {
                crate::launch::supervise::destroy(&Engine::new(&e.socket), &name);
                crate::sys::cgroup::remove_dirs(&e.made);
                if let Some(plan) = e.dirs.take() {
                    crate::launch::cleanup(&plan);
                }
            }
        }
    }
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        let mut e = lock(&self.entry);
        if e.gone {
            return; // destroy_all took it
        }
        e.ranks = e.ranks.saturating_sub(1);
        if e.ranks == 0 {
            crate::launch::supervise::destroy(&Engine::new(&e.socket), &self.name);
            crate::sys::cgroup::remove_dirs(&e.made);
            if let Some(plan) = e.dirs.take() {
                crate::launch::cleanup(&plan);
            }
            self.holders.forget(&self.name, &self.entry, &mut e);
        }
    }
}
