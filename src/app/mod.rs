//! The application layer: each command's flow, read as a checklist
//! ([`job`]); the broker daemon's per-connection flow ([`daemon`]);
//! `berth doctor` ([`doctor`]); logging setup ([`logger`]).

pub mod daemon;
pub mod doctor;
pub mod job;
pub mod logger;
