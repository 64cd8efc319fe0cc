//! berth: a safe `docker run` for HPC batch jobs.
//!
//! The pure core — [`policy`], [`identity`], [`request`], [`plan`] — turns
//! (policy, identity, request, image facts) into a [`plan::LaunchPlan`] or a
//! denial. The effects — [`engine`], [`launch`], [`sys`], [`audit`] — are a
//! thin layer that performs a plan.

pub mod audit;
pub mod broker;
pub mod bundle;
pub mod cgroup;
pub mod cli;
pub mod doctor;
pub mod engine;
pub mod enginecheck;
pub mod envfilter;
pub mod error;
pub mod facts;
pub mod identity;
pub mod image;
pub mod job;
pub mod launch;
pub mod logger;
pub mod lsf;
pub mod paths;
pub mod plan;
pub mod policy;
pub mod request;
pub mod size;
pub mod slurm;
pub mod sys;
