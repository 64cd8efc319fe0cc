//! The pure core: every decision berth makes, from text and facts it is
//! handed. Nothing here does I/O (no files, sockets, processes, libc) or
//! `unsafe`; nothing here imports another part of the crate. The host is
//! seen through traits the effect layers implement: [`plan::HostFs`]
//! (`sys::userfs::RealFs` on a node) and [`identity::UserDb`]
//! (`sys::nss::Nss`).

#![forbid(unsafe_code)]

pub mod cgroup;
pub mod devices;
pub mod envfilter;
pub mod error;
pub mod facts;
pub mod identity;
pub mod image;
pub mod mpi;
pub mod paths;
pub mod plan;
pub mod policy;
pub mod request;
pub mod share;
pub mod size;
