//! The batch schedulers berth plugs into.

pub mod lsf;
pub mod slurm;
