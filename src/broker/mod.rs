//! The broker (SPEC §7): a root daemon on a unix socket through which
//! unprivileged job users reach Docker without a setuid binary and without
//! membership in the `docker` group. Same policy, same planner, same
//! launcher; the identity is the socket peer's, from the kernel.
//!
//! Here: the wire format ([`proto`]) and the client side ([`client`]). The
//! daemon's per-connection flow is application code, `app::daemon`.

pub mod client;
pub mod proto;
