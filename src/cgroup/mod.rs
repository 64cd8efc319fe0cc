//! The job's allocation (SPEC §11): [`layout`] recognises a job from the
//! kernel's cgroup text and decides the container's placement (pure);
//! [`probe`] reads what the kernel says and removes what the engine made.

pub mod layout;
pub mod probe;

pub use layout::{JobCgroup, Placement};
