//! The pure core: the decisions, from text and facts handed in.

pub mod cgroup;
pub mod envfilter;
pub mod error;
pub mod facts;
pub mod identity;
pub mod image;
pub mod paths;
pub mod plan;
pub mod policy;
pub mod request;
pub mod size;
