//! berth: a safe `docker run` for HPC batch jobs.
//!
//! The pure core — [`core::policy`], [`core::identity`], [`core::request`],
//! [`core::plan`] — turns (policy, identity, request, image facts) into a
//! [`core::plan::LaunchPlan`] or a denial. The effects — [`engine`],
//! [`launch`], [`sys`], [`audit`] — are a thin layer that performs a plan.

pub mod app;
pub mod audit;
pub mod broker;
pub mod bundle;
pub mod cli;
pub mod core;
pub mod engine;
pub mod launch;
pub mod sched;
pub mod sys;
