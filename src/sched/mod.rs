//! The batch schedulers berth plugs into: [`lsf`] (esub, job starter,
//! control and monitor) and [`slurm`] (the OCI runtime glue). Both reach
//! the daemon through `broker::client`.

pub mod lsf;
pub mod slurm;
