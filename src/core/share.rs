//! Users' own bundles (SPEC §15): who may push one, how much, shared with
//! whom, and who may run it. Pure: the broker hands in the identity (from
//! SO_PEERCRED and NSS), the tar's size (fstat of the descriptor the user
//! opened) and what the user already holds in the cache.
//!
//! A user bundle is named `OWNER/NAME` once resolved; a job writes
//! `bundle:~/NAME` for its own user's, or `bundle:OWNER/NAME`.

use crate::core::error::{deny, Denial, Error, Result};
use crate::core::identity::Identity;
use crate::core::image::valid_bundle_name;
use crate::core::policy::{BundlePolicy, ShareKind};
use serde::{Deserialize, Serialize};

/// Whom a pushed bundle is shared with, as recorded in its bundle.toml.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Share {
    /// Its owner only.
    #[default]
    Private,
    /// The members of this group on the node a job runs on (by gid: a name
    /// can be renamed or reused, the gid the owner chose is what counts).
    Group { name: String, gid: u32 },
    /// Every user.
    All,
}

impl Share {
    pub fn kind(&self) -> Option<ShareKind> {
        match self {
            Share::Private => None,
            Share::Group { .. } => Some(ShareKind::Group),
            Share::All => Some(ShareKind::All),
        }
    }
}

impl std::fmt::Display for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Share::Private => write!(f, "private"),
            Share::Group { name, .. } => write!(f, "group:{name}"),
            Share::All => write!(f, "all"),
        }
    }
}

/// Who owns a user bundle and whom it is shared with: part of its facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub user: String,
    pub uid: u32,
    #[serde(default)]
    pub share: Share,
}

/// A user name that can be a path component of the cache and half of a
/// bundle key: 1-32 of A-Z a-z 0-9 . _ -, not starting with `.` or `-`,
/// no `..`.
pub fn valid_user_name(u: &str) -> bool {
    !u.is_empty()
        && u.len() <= 32
        && !u.starts_with(['.', '-'])
        && !u.contains("..")
        && u.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A bundle key as a job or a command names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key<'a> {
    /// `NAME`: a site bundle, in `<cache>/NAME`.
    Site(&'a str),
    /// `~/NAME`: the job user's own.
    Mine(&'a str),
    /// `OWNER/NAME`: a user's, in `<cache>/users/OWNER/NAME`.
    User(&'a str, &'a str),
}

/// Parse `NAME`, `~/NAME` or `OWNER/NAME`; `None` for anything else.
pub fn parse_key(s: &str) -> Option<Key<'_>> {
    match s.split_once('/') {
        // `users` holds users' bundles: never a site bundle's name.
        None => (valid_bundle_name(s) && s != "users").then_some(Key::Site(s)),
        Some(("~", n)) => valid_bundle_name(n).then_some(Key::Mine(n)),
        Some((u, n)) => (valid_user_name(u) && valid_bundle_name(n)).then_some(Key::User(u, n)),
    }
}

/// `~/NAME` made `USER/NAME` for the job's user; other keys as they are.
pub fn resolve_home(key: &str, user: &str) -> String {
    match parse_key(key) {
        Some(Key::Mine(n)) => format!("{user}/{n}"),
        _ => key.to_string(),
    }
}

fn in_group(id: &Identity, gid: u32) -> bool {
    id.gid == gid || id.groups.iter().any(|g| g.gid == gid)
}

fn kind_allowed(policy: &BundlePolicy, k: ShareKind) -> bool {
    policy.user_share.contains(&k)
}

fn allowed_kinds(policy: &BundlePolicy) -> String {
    if policy.user_share.is_empty() {
        return "none".into();
    }
    policy
        .user_share
        .iter()
        .map(|k| match k {
            ShareKind::Group => "group:G",
            ShareKind::All => "all",
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// May `id` run the user bundle `key` (`OWNER/NAME`) that `owner` owns?
pub fn may_run(policy: &BundlePolicy, id: &Identity, key: &str, owner: &Owner) -> Result<()> {
    let value = format!("bundle:{key}");
    if !policy.user_push {
        return deny(
            "bundles.user_push",
            value,
            format!("bundle {key} is a user's bundle, and this site does not run users' bundles"),
            "use a site bundle (berth bundle list) or an allowed image",
        );
    }
    if owner.uid == id.uid && owner.user == id.name {
        return Ok(());
    }
    let not_yours = format!("bundle {key} belongs to {}", owner.user);
    match &owner.share {
        Share::Private => Err(not_shared(key, &owner.user, &id.name)),
        s @ (Share::Group { .. } | Share::All)
            if !kind_allowed(policy, s.kind().unwrap_or(ShareKind::All)) =>
        {
            deny(
                "bundles.user_share",
                value,
                format!(
                    "{not_yours}, shared as {s}, and this site does not allow that kind of share (allowed: {})",
                    allowed_kinds(policy)
                ),
                format!("ask {} for a share this site allows, or push your own copy", owner.user),
            )
        }
        Share::Group { name, gid } if !in_group(id, *gid) => deny(
            "bundles.share",
            value,
            format!(
                "{not_yours} and is shared with group {name} (gid {gid}), which {} is not in on this node",
                id.name
            ),
            format!("ask to be added to group {name}, or push your own copy"),
        ),
        _ => Ok(()),
    }
}

/// Another user's bundle that is private, or that does not exist: one
/// denial for both, so that a job learns nothing of what others hold.
pub fn not_shared(key: &str, owner: &str, user: &str) -> Error {
    Denial::new(
        "bundles.share",
        format!("bundle:{key}"),
        format!("{owner} has no bundle {key} shared with {user}"),
        format!(
            "ask {owner} to push it with --share group:GROUP (a group you are both in), or push your own copy and run bundle:~/NAME"
        ),
    )
    .into()
}

/// What a user asks to push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushRequest {
    pub name: String,
    /// `--share` as given (`group:G`, `all`), with the group's gid when
    /// NSS knows the name.
    pub share: Option<(String, Option<u32>)>,
    /// The tar's size, from fstat of the descriptor the user passed.
    pub size: u64,
}

/// What the user already holds in the cache.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// Published bundles: name and size of image.tar.
    pub bundles: Vec<(String, u64)>,
    /// Bytes reserved by this user's pushes still being written.
    pub reserved: u64,
}

/// A push allowed: where it goes and what it may write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushPlan {
    /// `OWNER/NAME`.
    pub key: String,
    pub owner: Owner,
    /// The most image.tar may grow to (the source, and the little an
    /// export's config and headers add); the writer stops beyond it.
    pub reserve: u64,
    pub quota: u64,
}

/// Most bundles one user may hold, whatever their size: tiny tars must
/// not fill the cache's directories.
pub const MAX_BUNDLES: usize = 1000;

/// What a converted export adds to its source: one tar header, padding,
/// the config and manifest entries, the end blocks.
pub const EXPORT_OVERHEAD: u64 = 64 << 10;

/// Decide a push: enabled, a valid name, an allowed share, within quota
/// (counted before anything is written).
pub fn plan_push(
    policy: &BundlePolicy,
    id: &Identity,
    req: &PushRequest,
    usage: &Usage,
) -> Result<PushPlan> {
    if !policy.user_push {
        return deny(
            "bundles.user_push",
            &req.name,
            "this site does not let users push bundles",
            "ask your administrator to publish the image (berth bundle create), or to set [bundles] user_push = true",
        );
    }
    if !valid_bundle_name(&req.name) {
        return Err(Error::Malformed(format!(
            "bundle name {:?} must be 1-64 of A-Z a-z 0-9 . _ - and start with a letter or digit (no '/' or '..')",
            req.name
        )));
    }
    if !valid_user_name(&id.name) {
        return deny(
            "bundles.user_push",
            &id.name,
            format!(
                "user name {:?} cannot name a directory of the bundle cache",
                id.name
            ),
            "ask your administrator to publish the image for you",
        );
    }
    let share = match &req.share {
        None => Share::Private,
        Some((s, _)) if s == "all" => Share::All,
        Some((s, gid)) => match s.strip_prefix("group:") {
            Some(g) if !g.is_empty() => match gid {
                Some(gid) if in_group(id, *gid) => Share::Group {
                    name: g.to_string(),
                    gid: *gid,
                },
                Some(_) => {
                    return deny(
                        "bundles.share",
                        s,
                        format!("{} is not in group {g}: a bundle can be shared only with a group its owner is in", id.name),
                        "share with one of your groups (id -Gn lists them)",
                    )
                }
                None => {
                    return Err(Error::Malformed(format!(
                        "--share {s}: there is no group {g:?} on this node"
                    )))
                }
            },
            _ => {
                return Err(Error::Malformed(format!(
                    "--share {s:?} must be group:GROUP or all"
                )))
            }
        },
    };
    if let Some(k) = share.kind() {
        if !kind_allowed(policy, k) {
            return deny(
                "bundles.user_share",
                share.to_string(),
                format!(
                    "this site does not allow sharing bundles as {share} (allowed: {})",
                    allowed_kinds(policy)
                ),
                "push without --share, or with a kind of share the site allows",
            );
        }
    }
    let others = usage.bundles.iter().filter(|(n, _)| n != &req.name).count();
    if others >= MAX_BUNDLES {
        return deny(
            "bundles.user_quota",
            &req.name,
            format!(
                "{} already has {others} bundles, the most one user may hold",
                id.name
            ),
            "remove bundles you no longer need (berth bundle list, berth bundle rm NAME), or push over an existing name",
        );
    }
    let quota = crate::core::size::parse(&policy.user_quota).unwrap_or(0);
    let reserve = req.size.saturating_add(EXPORT_OVERHEAD);
    // The bundle this push replaces is freed when it publishes.
    let held: u64 = usage
        .bundles
        .iter()
        .filter(|(n, _)| n != &req.name)
        .map(|(_, s)| *s)
        .sum::<u64>()
        .saturating_add(usage.reserved);
    if held.saturating_add(reserve) > quota {
        let h = |n: u64| crate::core::size::approx(n);
        return deny(
            "bundles.user_quota",
            format!("{} bytes", req.size),
            format!(
                "pushing {} ({}) would bring {}'s bundles to {} of a {} quota ({} held in {} bundles{})",
                req.name,
                h(req.size),
                id.name,
                h(held.saturating_add(reserve)),
                h(quota),
                h(held),
                usage.bundles.iter().filter(|(n, _)| n != &req.name).count(),
                if usage.reserved > 0 {
                    format!(", {} in pushes still running", h(usage.reserved))
                } else {
                    String::new()
                }
            ),
            "remove bundles you no longer need (berth bundle list, berth bundle rm NAME), or ask your administrator for a larger bundles.user_quota",
        );
    }
    Ok(PushPlan {
        key: format!("{}/{}", id.name, req.name),
        owner: Owner {
            user: id.name.clone(),
            uid: id.uid,
            share,
        },
        reserve,
        quota,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::identity::GroupEntry;

    fn id(name: &str, uid: u32, groups: &[u32]) -> Identity {
        Identity {
            name: name.into(),
            uid,
            gid: uid,
            groups: groups
                .iter()
                .map(|g| GroupEntry {
                    gid: *g,
                    name: format!("g{g}"),
                })
                .collect(),
            primary_group_name: name.into(),
            home: "/".into(),
            shell: "/bin/sh".into(),
        }
    }

    fn pol() -> BundlePolicy {
        BundlePolicy {
            user_push: true,
            user_quota: "1m".into(),
            ..BundlePolicy::default()
        }
    }

    fn rule<T: std::fmt::Debug>(r: Result<T>) -> String {
        match r {
            Err(Error::Denied(d)) => d.rule.to_string(),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn keys() {
        assert_eq!(parse_key("pt2"), Some(Key::Site("pt2")));
        assert_eq!(parse_key("~/pt2"), Some(Key::Mine("pt2")));
        assert_eq!(parse_key("alice/pt2"), Some(Key::User("alice", "pt2")));
        for bad in [
            "",
            "a/b/c",
            "../x",
            "alice/..",
            "alice/.x",
            ".alice/x",
            "-u/x",
            "~/",
            "/x",
            "a//x",
            "al ice/x",
            "~x/y",
            "alice/x y",
        ] {
            assert_eq!(parse_key(bad), None, "{bad:?}");
        }
        assert_eq!(resolve_home("~/pt2", "alice"), "alice/pt2");
        assert_eq!(resolve_home("bob/pt2", "alice"), "bob/pt2");
        assert_eq!(resolve_home("pt2", "alice"), "pt2");
    }

    #[test]
    fn who_may_run() {
        let p = pol();
        let alice = id("alice", 1001, &[500]);
        let bob = id("bob", 1002, &[600]);
        let bob_in = id("bob", 1002, &[500]);
        let own = |share| Owner {
            user: "alice".into(),
            uid: 1001,
            share,
        };
        assert!(may_run(&p, &alice, "alice/x", &own(Share::Private)).is_ok());
        assert_eq!(
            rule(may_run(&p, &bob, "alice/x", &own(Share::Private))),
            "bundles.share"
        );
        let g = Share::Group {
            name: "proj".into(),
            gid: 500,
        };
        assert!(may_run(&p, &bob_in, "alice/x", &own(g.clone())).is_ok());
        assert_eq!(
            rule(may_run(&p, &bob, "alice/x", &own(g.clone()))),
            "bundles.share"
        );
        // A share the site no longer allows stops counting.
        assert_eq!(
            rule(may_run(&p, &bob, "alice/x", &own(Share::All))),
            "bundles.user_share"
        );
        let all = BundlePolicy {
            user_share: vec![ShareKind::All],
            ..pol()
        };
        assert!(may_run(&all, &bob, "alice/x", &own(Share::All)).is_ok());
        assert_eq!(
            rule(may_run(&all, &bob_in, "alice/x", &own(g))),
            "bundles.user_share"
        );
        // The same name with another uid is not the owner.
        let imposter = id("alice", 4242, &[]);
        assert_eq!(
            rule(may_run(&p, &imposter, "alice/x", &own(Share::Private))),
            "bundles.share"
        );
        // Users' bundles do not run where users may not push.
        let off = BundlePolicy::default();
        assert_eq!(
            rule(may_run(&off, &alice, "alice/x", &own(Share::Private))),
            "bundles.user_push"
        );
    }

    #[test]
    fn pushes() {
        let p = pol();
        let alice = id("alice", 1001, &[500]);
        let req = |name: &str, share: Option<(&str, Option<u32>)>, size| PushRequest {
            name: name.into(),
            share: share.map(|(s, g)| (s.to_string(), g)),
            size,
        };
        let none = Usage::default();
        let ok = plan_push(&p, &alice, &req("x", None, 1000), &none).unwrap();
        assert_eq!(ok.key, "alice/x");
        assert_eq!(ok.owner.share, Share::Private);
        assert_eq!(ok.reserve, 1000 + EXPORT_OVERHEAD);
        let g = plan_push(
            &p,
            &alice,
            &req("x", Some(("group:proj", Some(500))), 1),
            &none,
        )
        .unwrap();
        assert_eq!(
            g.owner.share,
            Share::Group {
                name: "proj".into(),
                gid: 500
            }
        );
        assert_eq!(
            rule(plan_push(
                &p,
                &alice,
                &req("x", Some(("group:other", Some(9))), 1),
                &none
            )),
            "bundles.share"
        );
        assert!(matches!(
            plan_push(
                &p,
                &alice,
                &req("x", Some(("group:nosuch", None)), 1),
                &none
            ),
            Err(Error::Malformed(_))
        ));
        assert_eq!(
            rule(plan_push(
                &p,
                &alice,
                &req("x", Some(("all", None)), 1),
                &none
            )),
            "bundles.user_share"
        );
        for bad in ["a/b", "..", "../x", ".x", "a b", ""] {
            assert!(
                matches!(
                    plan_push(&p, &alice, &req(bad, None, 1), &none),
                    Err(Error::Malformed(_))
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            plan_push(&p, &alice, &req("x", Some(("everyone", None)), 1), &none),
            Err(Error::Malformed(_))
        ));
        // Quota: all bundles together, the replaced one not counted,
        // running pushes counted.
        let held = Usage {
            bundles: vec![("a".into(), 500 << 10), ("x".into(), 900 << 10)],
            reserved: 0,
        };
        assert!(plan_push(&p, &alice, &req("x", None, 400 << 10), &held).is_ok());
        let e = plan_push(&p, &alice, &req("y", None, 400 << 10), &held);
        assert_eq!(rule(e), "bundles.user_quota");
        let busy = Usage {
            bundles: vec![],
            reserved: 900 << 10,
        };
        assert_eq!(
            rule(plan_push(&p, &alice, &req("y", None, 100 << 10), &busy)),
            "bundles.user_quota"
        );
        let off = BundlePolicy::default();
        assert_eq!(
            rule(plan_push(&off, &alice, &req("x", None, 1), &none)),
            "bundles.user_push"
        );
        // However small, at most MAX_BUNDLES bundles (replacing one is fine).
        let many = Usage {
            bundles: (0..MAX_BUNDLES).map(|i| (format!("b{i}"), 0)).collect(),
            reserved: 0,
        };
        assert_eq!(
            rule(plan_push(&p, &alice, &req("new", None, 1), &many)),
            "bundles.user_quota"
        );
        assert!(plan_push(&p, &alice, &req("b7", None, 1), &many).is_ok());
    }
}
