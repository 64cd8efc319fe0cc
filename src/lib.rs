//! berth: a safe `docker run` for HPC batch jobs.
//!
//! The directories say which side of the plan/act line code is on, and
//! dependencies flow one way: [`app`] → ([`sched`], [`broker`], [`launch`],
//! [`bundle`], [`engine`]) → [`sys`] / [`core`].
//!
//! * [`core`] — pure decisions, `#![forbid(unsafe_code)]`, no I/O: the
//!   policy, request parsing, identity rules, env filtering, the job's
//!   cgroup text, and the planner, which turns (policy, identity, request,
//!   image facts) into a [`core::plan::LaunchPlan`] or a denial.
//! * [`sys`] — every libc call and every `unsafe` block: hardening, acting
//!   as the user, NSS, trusted files and the policy file, cgroup files.
//! * [`engine`] — the Docker Engine API client, the engine checks, and image
//!   facts gathering; [`launch`] performs a plan through it.
//! * [`broker`] — the daemon's wire format and its client; [`sched`] — the
//!   LSF and Slurm entry points; [`bundle`] — the image bundle cache.
//! * [`app`] — each command's flow, read as a checklist ([`app::job`]), the
//!   broker daemon ([`app::daemon`]) and `doctor`; [`cli`] the command line;
//!   [`audit`] the audit log the app, broker daemon, bundles and LSF write.

#![deny(unsafe_code)]

pub mod app;
pub mod audit;
pub mod broker;
pub mod bundle;
pub mod cli;
pub mod core;
pub mod engine;
pub mod launch;
pub mod sched;
// Every libc call that needs `unsafe` lives in sys/, and only there.
#[allow(unsafe_code)]
pub mod sys;
