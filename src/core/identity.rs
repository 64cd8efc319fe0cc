//! Who the job runs as. The identity comes only from a trusted channel: the
//! caller's real uid, or the scheduler's `LSFUSER` when the caller is root
//! or a relay named in policy. Names and groups come from a [`UserDb`]
//! (the node's NSS, `sys::nss::Nss`, or a fake in tests).

use crate::core::error::{Denial, Error, Result};
use crate::core::policy::Policy;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (the primary excluded), each with its name.
    pub groups: Vec<GroupEntry>,
    pub primary_group_name: String,
    pub home: String,
    pub shell: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupEntry {
    pub gid: u32,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
}

/// The user database. The real one is NSS; tests use a table.
pub trait UserDb {
    fn by_uid(&self, uid: u32) -> Result<Option<UserEntry>>;
    fn by_name(&self, name: &str) -> Result<Option<UserEntry>>;
    /// All groups of the user, as getgrouplist(3) returns them.
    fn group_list(&self, name: &str, gid: u32) -> Result<Vec<u32>>;
    fn group_name(&self, gid: u32) -> Result<Option<String>>;
}

/// Most groups berth passes on (the kernel's NGROUPS_MAX).
pub const MAX_GROUPS: usize = 65536;

/// Resolve the job's identity. `caller` is the real uid of the process (or
/// the peer's SO_PEERCRED uid); `named` is what the scheduler says the job
/// user is (`LSFUSER`, `SLURM_JOB_UID`), honoured only for trusted callers.
pub fn resolve(
    db: &dyn UserDb,
    policy: &Policy,
    caller: u32,
    named: Option<&str>,
) -> Result<Identity> {
    let user = match named.filter(|n| !n.is_empty()) {
        Some(n) if is_trusted_relay(db, policy, caller)? => lookup_named(db, n)?,
        Some(n) => {
            log::warn!(
                "ignoring job user {n:?} named by uid {caller}, which is not a trusted relay"
            );
            lookup_uid(db, caller)?
        }
        None => lookup_uid(db, caller)?,
    };
    if user.uid == 0 {
        return Err(Denial::new(
            "identity.root",
            user.name,
            "jobs never run as root (uid 0)",
            "submit the job as an ordinary user",
        )
        .into());
    }
    if user.uid < policy.identity.min_uid {
        return Err(Denial::new(
            "identity.min_uid",
            user.uid.to_string(),
            format!(
                "user {} has uid {}, below the site minimum {}",
                user.name, user.uid, policy.identity.min_uid
            ),
            "system accounts cannot run containers; submit as your own user",
        )
        .into());
    }
    if user.gid == 0 || user.gid < policy.identity.min_gid {
        return Err(Denial::new(
            "identity.min_gid",
            user.gid.to_string(),
            format!(
                "user {} has primary gid {}, below the site minimum {}",
                user.name, user.gid, policy.identity.min_gid
            ),
            "ask your administrator to give the account an ordinary primary group",
        )
        .into());
    }
    let all = db.group_list(&user.name, user.gid)?;
    if all.contains(&0) {
        return Err(Denial::new(
            "identity.gid0",
            user.name.clone(),
            format!("user {} is a member of group 0 (root)", user.name),
            "group 0 is never given to a container; remove the user from it",
        )
        .into());
    }
    if all.len() > MAX_GROUPS {
        return Err(Denial::new(
            "identity.groups",
            all.len().to_string(),
            format!(
                "user {} has {} groups, more than the kernel's {MAX_GROUPS}",
                user.name,
                all.len()
            ),
            "reduce the user's group memberships",
        )
        .into());
    }
    let mut groups = Vec::new();
    for g in all {
        // Groups below the minimum (node-local system groups) are dropped:
        // fewer privileges, never more.
        if g == user.gid
            || g < policy.identity.min_gid
            || groups.iter().any(|e: &GroupEntry| e.gid == g)
        {
            continue;
        }
        let name = db.group_name(g)?.unwrap_or_else(|| format!("g{g}"));
        groups.push(GroupEntry { gid: g, name });
    }
    let primary_group_name = db
        .group_name(user.gid)?
        .unwrap_or_else(|| user.name.clone());
    Ok(Identity {
        name: user.name,
        uid: user.uid,
        gid: user.gid,
        groups,
        primary_group_name,
        home: user.home,
        shell: user.shell,
    })
}

/// Whether `caller` may name the job user: root, or a relay listed in policy.
pub fn is_trusted_relay(db: &dyn UserDb, policy: &Policy, caller: u32) -> Result<bool> {
    if caller == 0 {
        return Ok(true);
    }
    for r in &policy.identity.relays {
        if let Some(u) = db.by_name(r)? {
            if u.uid == caller {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

fn lookup_uid(db: &dyn UserDb, uid: u32) -> Result<UserEntry> {
    db.by_uid(uid)?.ok_or_else(|| {
        Denial::new(
            "identity.unknown",
            uid.to_string(),
            format!("uid {uid} has no entry in the user database"),
            "run the job as a user known to NSS on this node",
        )
        .into()
    })
}

fn lookup_named(db: &dyn UserDb, name: &str) -> Result<UserEntry> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'@'));
    if !valid {
        return Err(Error::Malformed(format!(
            "job user {name:?} is not a valid user name"
        )));
    }
    db.by_name(name)?.ok_or_else(|| {
        Denial::new(
            "identity.unknown",
            name,
            format!("job user {name:?} has no entry in the user database"),
            "check LSFUSER; the user must be known to NSS on this node",
        )
        .into()
    })
}

#[cfg(test)]
pub mod fake {
    use super::*;

    /// A table of users and groups for unit tests.
    #[derive(Default)]
    pub struct FakeDb {
        pub users: Vec<UserEntry>,
        pub groups: Vec<(u32, String, Vec<String>)>,
    }

    impl FakeDb {
        pub fn standard() -> Self {
            let u = |name: &str, uid, gid| UserEntry {
                name: name.into(),
                uid,
                gid,
                home: format!("/home/{name}"),
                shell: "/bin/bash".into(),
            };
            FakeDb {
                users: vec![
                    u("root", 0, 0),
                    u("alice", 2001, 2001),
                    u("bob", 2002, 2002),
                    u("lsfadmin", 900, 900),
                    u("daemon", 2, 2),
                    u("wheelie", 2005, 2005),
                    u("zerog", 2006, 0),
                ],
                groups: vec![
                    (0, "root".into(), vec!["wheelie".into()]),
                    (24, "cdrom".into(), vec!["alice".into()]),
                    (2001, "alice".into(), vec![]),
                    (2002, "bob".into(), vec![]),
                    (2005, "wheelie".into(), vec![]),
                    (3001, "lab1".into(), vec!["alice".into()]),
                    (3002, "lab2".into(), vec!["alice".into(), "bob".into()]),
                ],
            }
        }
    }

    impl UserDb for FakeDb {
        fn by_uid(&self, uid: u32) -> Result<Option<UserEntry>> {
            Ok(self.users.iter().find(|u| u.uid == uid).cloned())
        }
        fn by_name(&self, name: &str) -> Result<Option<UserEntry>> {
            Ok(self.users.iter().find(|u| u.name == name).cloned())
        }
        fn group_list(&self, name: &str, gid: u32) -> Result<Vec<u32>> {
            let mut v = vec![gid];
            v.extend(
                self.groups
                    .iter()
                    .filter(|g| g.2.iter().any(|m| m == name))
                    .map(|g| g.0),
            );
            Ok(v)
        }
        fn group_name(&self, gid: u32) -> Result<Option<String>> {
            Ok(self.groups.iter().find(|g| g.0 == gid).map(|g| g.1.clone()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeDb;
    use super::*;

    fn policy() -> Policy {
        Policy::parse("[identity]\nrelays=['lsfadmin']\n", "t").unwrap()
    }

    #[test]
    fn caller_identity_with_groups() {
        let id = resolve(&FakeDb::standard(), &policy(), 2001, None).unwrap();
        assert_eq!((id.uid, id.gid), (2001, 2001));
        let gids: Vec<u32> = id.groups.iter().map(|g| g.gid).collect();
        // cdrom (24) is below min_gid and dropped; the primary is not repeated.
        assert_eq!(gids, vec![3001, 3002]);
    }

    #[test]
    fn lsfuser_only_from_root_or_relay() {
        let db = FakeDb::standard();
        assert_eq!(resolve(&db, &policy(), 0, Some("bob")).unwrap().uid, 2002);
        assert_eq!(resolve(&db, &policy(), 900, Some("bob")).unwrap().uid, 2002);
        // alice is not a relay: her forged LSFUSER is ignored.
        assert_eq!(
            resolve(&db, &policy(), 2001, Some("bob")).unwrap().uid,
            2001
        );
    }

    #[test]
    fn root_system_and_gid0_refused() {
        let db = FakeDb::standard();
        let p = policy();
        for (caller, named, rule) in [
            (0, None, "identity.root"),
            (0, Some("root"), "identity.root"),
            (2, None, "identity.min_uid"),
            (2005, None, "identity.gid0"),
            (2006, None, "identity.min_gid"),
            (4242, None, "identity.unknown"),
            (0, Some("nobody-here"), "identity.unknown"),
        ] {
            match resolve(&db, &p, caller, named) {
                Err(Error::Denied(d)) => assert_eq!(d.rule, rule, "{caller} {named:?}"),
                other => panic!("{caller} {named:?}: {other:?}"),
            }
        }
        assert!(matches!(
            resolve(&db, &p, 0, Some("-rf")),
            Err(Error::Malformed(_))
        ));
    }
}
