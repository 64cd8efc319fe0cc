//! The application layer: each command's flow.

pub mod daemon;
pub mod doctor;
pub mod job;
pub mod logger;
