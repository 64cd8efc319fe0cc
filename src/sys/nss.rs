//! The node's user database through NSS: the [`UserDb`] the identity
//! rules in [`crate::core::identity`] consult on a real node.

use crate::core::error::{Error, Result};
use crate::core::identity::{UserDb, UserEntry};

/// The node's user database through NSS (getpwuid_r, getgrouplist).
pub struct Nss;

fn nss_err(what: &str, e: nix::Error) -> Error {
    Error::Unavailable(format!(
        "user database lookup of {what} failed: {e}; check NSS (sssd, ldap) on this node"
    ))
}

fn to_entry(u: nix::unistd::User) -> UserEntry {
    UserEntry {
        name: u.name,
        uid: u.uid.as_raw(),
        gid: u.gid.as_raw(),
        home: u.dir.to_string_lossy().into_owned(),
        shell: u.shell.to_string_lossy().into_owned(),
    }
}

impl UserDb for Nss {
    fn by_uid(&self, uid: u32) -> Result<Option<UserEntry>> {
        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .map(|o| o.map(to_entry))
            .map_err(|e| nss_err(&format!("uid {uid}"), e))
    }
    fn by_name(&self, name: &str) -> Result<Option<UserEntry>> {
        nix::unistd::User::from_name(name)
            .map(|o| o.map(to_entry))
            .map_err(|e| nss_err(&format!("user {name:?}"), e))
    }
    fn group_list(&self, name: &str, gid: u32) -> Result<Vec<u32>> {
        let c = std::ffi::CString::new(name)
            .map_err(|_| Error::Malformed(format!("user name {name:?} holds a NUL byte")))?;
        nix::unistd::getgrouplist(&c, nix::unistd::Gid::from_raw(gid))
            .map(|v| v.into_iter().map(|g| g.as_raw()).collect())
            .map_err(|e| nss_err(&format!("groups of {name:?}"), e))
    }
    fn group_name(&self, gid: u32) -> Result<Option<String>> {
        nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
            .map(|o| o.map(|g| g.name))
            .map_err(|e| nss_err(&format!("gid {gid}"), e))
    }
}
