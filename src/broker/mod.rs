//! The broker (SPEC §7): a root daemon on a unix socket through which
//! unprivileged job users reach Docker without a setuid binary and without
//! membership in the `docker` group. Same policy, same planner, same
//! launcher; the identity is the socket peer's, from the kernel.

pub mod client;
pub mod proto;
pub mod server;
