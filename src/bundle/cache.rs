//! The bundle cache on the shared filesystem: safe-path checks, lookup,
//! list, atomic publish, rm and the leftovers of interrupted writers.
//!
//! Layout: `<cache>/<name>/{bundle.toml,image.tar,config.json,rootfs/}` for
//! the site's bundles, `<cache>/users/<user>/<name>/` for users' (SPEC §15;
//! `users/` is root's 0711, each user's directory root's 0700: only berth
//! reads a user's image, whatever it is shared with).
//! Writers build `.tmp-<name>-<random>/` beside the bundle and publish it
//! with one rename (or an atomic exchange when the name exists), so a
//! reader sees the old bundle or the new one, never half of one. Names
//! starting with `.` are never valid bundle names, so a writer's leftovers
//! cannot be run. A user's push holds an flock on `.reserve` in its temp
//! directory, which says how many bytes it may write: quota counts it
//! while the lock is held, and `gc` never removes a live push.

use super::Meta;
use crate::core::error::{Denial, Error, Result};
use crate::core::policy::Policy;
use crate::core::share::{parse_key, valid_user_name, Key};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub const META: &str = "bundle.toml";
pub const TAR: &str = "image.tar";
pub const TMP_PREFIX: &str = ".tmp-";
const OLD_PREFIX: &str = ".old-";
/// The users' part of the cache.
pub const USERS: &str = "users";
/// The most of a bundle.toml that is read.
pub const META_LIMIT: u64 = 1 << 20;
/// In a push's temp directory: the bytes it reserved, under its flock.
pub const RESERVE: &str = ".reserve";

pub struct Cache {
    pub root: PathBuf,
    /// The uid besides root that may own the cache (policy bundles.owner).
    pub owner: u32,
}

/// A published bundle, its directory checked and its bundle.toml read.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub name: String,
    pub dir: PathBuf,
    pub meta: Meta,
}

fn unsafe_path(p: &Path, why: String) -> Error {
    Error::Config(format!(
        "bundle cache path {} {why}; fix it (chown root:root, chmod go-w) or ask your administrator",
        p.display()
    ))
}

/// A path inside the checked cache: not a symlink, the expected type, owned
/// by root or `owner`, not writable by group or others.
pub fn check_entry(p: &Path, owner: u32, dir: bool) -> Result<std::fs::Metadata> {
    let md = std::fs::symlink_metadata(p)
        .map_err(|e| unsafe_path(p, format!("cannot be read ({e})")))?;
    if md.file_type().is_symlink() {
        return Err(unsafe_path(p, "is a symlink".into()));
    }
    if dir && !md.is_dir() || !dir && !md.is_file() {
        return Err(unsafe_path(
            p,
            format!(
                "is not a {}",
                if dir { "directory" } else { "regular file" }
            ),
        ));
    }
    check_owner_mode(p, &md, owner)?;
    Ok(md)
}

fn check_owner_mode(p: &Path, md: &std::fs::Metadata, owner: u32) -> Result<()> {
    if md.uid() != 0 && md.uid() != owner {
        return Err(unsafe_path(
            p,
            format!(
                "is owned by uid {}, not root or the bundles.owner",
                md.uid()
            ),
        ));
    }
    if md.mode() & 0o022 != 0 {
        return Err(unsafe_path(
            p,
            format!(
                "is writable by group or others (mode {:o})",
                md.mode() & 0o7777
            ),
        ));
    }
    Ok(())
}

/// The uid of a user name (policy bundles.owner).
pub fn owner_uid(name: &str) -> Result<u32> {
    if name == "root" {
        return Ok(0);
    }
    if let Ok(n) = name.parse::<u32>() {
        return Ok(n);
    }
    match nix::unistd::User::from_name(name) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        Ok(None) => Err(Error::Config(format!(
            "bundles.owner {name:?} is not a user on this node; fix the policy"
        ))),
        Err(e) => Err(Error::Config(format!(
            "bundles.owner {name:?} cannot be resolved ({e})"
        ))),
    }
}

fn no_such(name: &str) -> Error {
    Denial::new(
        "bundles.cache",
        format!("bundle:{name}"),
        format!("there is no bundle {name:?} in the bundle cache"),
        "berth bundle list shows the bundles of this site",
    )
    .into()
}

impl Cache {
    /// The policy's cache, with the root and all its parents checked.
    pub fn open(policy: &Policy) -> Result<Cache> {
        let root = policy.bundles.cache.clone().ok_or_else(|| {
            Error::Config("no bundle cache configured: set [bundles] cache in the policy".into())
        })?;
        let root = crate::core::paths::normalize_abs(&root).ok_or_else(|| {
            Error::Config(format!(
                "bundles.cache {} must be an absolute path without '.' or '..'",
                root.display()
            ))
        })?;
        let owner = owner_uid(&policy.bundles.owner)?;
        Cache::at(&root, owner)
    }

    pub fn at(root: &Path, owner: u32) -> Result<Cache> {
        crate::sys::trusted::check_trusted_path(root, owner).map_err(|e| match e {
            Error::Config(m) => Error::Config(format!("bundle cache: {m}")),
            e => e,
        })?;
        let md = std::fs::metadata(root)
            .map_err(|e| unsafe_path(root, format!("cannot be read ({e})")))?;
        if !md.is_dir() {
            return Err(unsafe_path(root, "is not a directory".into()));
        }
        Ok(Cache {
            root: root.to_path_buf(),
            owner,
        })
    }

    /// Where bundle `key` (`NAME` or `OWNER/NAME`) lives.
    fn dir_of(&self, key: &str) -> Result<PathBuf> {
        match parse_key(key) {
            Some(Key::Site(n)) => Ok(self.root.join(n)),
            Some(Key::User(u, n)) => Ok(self.root.join(USERS).join(u).join(n)),
            _ => Err(Error::Malformed(format!(
                "bundle {key:?} must be NAME or USER/NAME, each NAME 1-64 of A-Z a-z 0-9 . _ - starting with a letter or digit"
            ))),
        }
    }

    /// The directory holding bundle `key` (the cache, or its owner's).
    fn parent_of(&self, key: &str) -> Result<PathBuf> {
        let d = self.dir_of(key)?;
        Ok(d.parent().map(Path::to_path_buf).unwrap_or_default())
    }

    /// `<cache>/users/<user>`, checked; created (root, 0700; `users/`
    /// 0711) when `create`. `Ok(None)`: it does not exist.
    pub fn user_dir(&self, user: &str, create: bool) -> Result<Option<PathBuf>> {
        if !valid_user_name(user) {
            return Err(Error::Malformed(format!(
                "user name {user:?} cannot name a directory of the bundle cache"
            )));
        }
        let users = self.root.join(USERS);
        let dir = users.join(user);
        for (p, mode) in [(&users, 0o711), (&dir, 0o700)] {
            match std::fs::symlink_metadata(p) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                    use std::os::unix::fs::DirBuilderExt;
                    match std::fs::DirBuilder::new().mode(mode).create(p) {
                        Ok(()) => {}
                        // A concurrent push made it: checked below.
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                        Err(e) => {
                            return Err(Error::Config(format!(
                                "cannot create {}: {e}",
                                p.display()
                            )))
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                _ => {}
            }
            check_entry(p, self.owner, true)?;
        }
        Ok(Some(dir))
    }

    /// The users who have a directory in the cache.
    pub fn users(&self) -> Result<Vec<String>> {
        let users = self.root.join(USERS);
        if std::fs::symlink_metadata(&users).is_err() {
            return Ok(Vec::new());
        }
        check_entry(&users, self.owner, true)?;
        Ok(names_in(&users)?
            .into_iter()
            .filter(|n| valid_user_name(n))
            .collect())
    }

    /// A published bundle by name: directory and bundle.toml checked, read.
    pub fn get(&self, name: &str) -> Result<Bundle> {
        let dir = self.dir_of(name)?;
        if let Some(Key::User(u, _)) = parse_key(name) {
            if self.user_dir(u, false)?.is_none() {
                return Err(no_such(name));
            }
        }
        match std::fs::symlink_metadata(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(no_such(name)),
            _ => {}
        }
        check_entry(&dir, self.owner, true)?;
        let mp = dir.join(META);
        let text = read_checked(&mp, self.owner, META_LIMIT)?;
        let text = String::from_utf8(text).map_err(|_| {
            Error::Config(format!(
                "{} is not UTF-8; recreate the bundle",
                mp.display()
            ))
        })?;
        let meta: Meta = toml::from_str(&text).map_err(|e| {
            Error::Config(format!(
                "{} does not parse ({}); recreate the bundle",
                mp.display(),
                e.to_string().replace('\n', " ")
            ))
        })?;
        if meta.name != name || !crate::core::facts::valid_image_id(&meta.image_id) {
            return Err(Error::Config(format!(
                "{} names bundle {:?} with image id {:?}; recreate the bundle",
                mp.display(),
                meta.name,
                meta.image_id
            )));
        }
        // A user's bundle is theirs by its place and its record, both.
        let owner_ok = match parse_key(name) {
            Some(Key::User(u, _)) => meta.owner.as_ref().is_some_and(|o| o.user == u),
            _ => meta.owner.is_none(),
        };
        if !owner_ok {
            return Err(Error::Config(format!(
                "{} records owner {:?}, which does not match where it is; remove the bundle",
                mp.display(),
                meta.owner.as_ref().map(|o| o.user.as_str())
            )));
        }
        Ok(Bundle {
            name: name.to_string(),
            dir,
            meta,
        })
    }

    /// Every published bundle (sorted by name), each checked; a bundle that
    /// fails its checks is listed with its error.
    pub fn list(&self) -> Result<Vec<(String, Result<Bundle>)>> {
        let names: Vec<String> = names_in(&self.root)?
            .into_iter()
            .filter(|n| matches!(parse_key(n), Some(Key::Site(_))))
            .collect();
        Ok(names
            .into_iter()
            .map(|n| {
                let b = self.get(&n);
                (n, b)
            })
            .collect())
    }

    /// One user's bundles, keyed `USER/NAME`, sorted.
    pub fn list_user(&self, user: &str) -> Result<Vec<(String, Result<Bundle>)>> {
        let Some(dir) = self.user_dir(user, false)? else {
            return Ok(Vec::new());
        };
        Ok(names_in(&dir)?
            .into_iter()
            .filter(|n| crate::core::image::valid_bundle_name(n))
            .map(|n| {
                let key = format!("{user}/{n}");
                let b = self.get(&key);
                (key, b)
            })
            .collect())
    }

    /// Every bundle: the site's, then each user's.
    pub fn list_all(&self) -> Result<Vec<(String, Result<Bundle>)>> {
        let mut all = self.list()?;
        for u in self.users()? {
            all.extend(self.list_user(&u)?);
        }
        Ok(all)
    }

    /// The size of a bundle's image.tar on disk, whatever its bundle.toml
    /// says (0 if there is none).
    pub fn disk_size(&self, key: &str) -> u64 {
        self.dir_of(key)
            .ok()
            .and_then(|d| std::fs::symlink_metadata(d.join(TAR)).ok())
            .map_or(0, |m| m.len())
    }

    /// Bytes reserved by a user's pushes still being written: the
    /// `.reserve` of each temp directory whose writer holds its lock (a
    /// dead writer's lock is free, and its leftovers count for nothing).
    pub fn reserved(&self, user: &str) -> Result<u64> {
        let Some(dir) = self.user_dir(user, false)? else {
            return Ok(0);
        };
        let mut n = 0u64;
        for name in names_in(&dir)? {
            if !name.starts_with(TMP_PREFIX) {
                continue;
            }
            let Ok(f) = open_nofollow(&dir.join(&name).join(RESERVE)) else {
                continue;
            };
            if crate::sys::process::flock_try_exclusive(&f).unwrap_or(true) {
                continue;
            }
            let mut text = String::new();
            use std::io::Read;
            let _ = (&f).take(32).read_to_string(&mut text);
            n = n.saturating_add(text.trim().parse::<u64>().unwrap_or(0));
        }
        Ok(n)
    }

    /// A fresh private directory beside the bundles for a writer.
    pub fn temp_dir(&self, key: &str) -> Result<PathBuf> {
        let dir = self.dir_of(key)?;
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let p = self
            .parent_of(key)?
            .join(format!("{TMP_PREFIX}{name}-{}", crate::sys::random_hex(6)?));
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&p)
            .map_err(|e| Error::Config(format!("cannot create {}: {e}", p.display())))?;
        Ok(p)
    }

    /// Publish a finished temp directory as `name`, atomically replacing an
    /// existing bundle of that name.
    pub fn publish(&self, tmp: &Path, name: &str) -> Result<()> {
        let dst = self.dir_of(name)?;
        let io = |what: &str, e: std::io::Error| {
            Error::Config(format!("cannot publish bundle {name} ({what}): {e}"))
        };
        // The temp dir was private while being written.
        std::fs::set_permissions(tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(|e| io("chmod", e))?;
        match std::fs::symlink_metadata(&dst) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return std::fs::rename(tmp, &dst).map_err(|e| io("rename", e));
            }
            Err(e) => return Err(io("stat", e)),
            Ok(_) => {}
        }
        match exchange(tmp, &dst) {
            Ok(()) => {
                // tmp now holds the old bundle.
                let _ = std::fs::remove_dir_all(tmp);
                Ok(())
            }
            Err(e)
                if e.raw_os_error() == Some(libc::EINVAL)
                    || e.raw_os_error() == Some(libc::ENOSYS) =>
            {
                // A filesystem without RENAME_EXCHANGE: move the old one
                // aside, then rename (the name is briefly absent, never half).
                let old = self.old_path(name)?;
                std::fs::rename(&dst, &old).map_err(|e| io("rename old", e))?;
                std::fs::rename(tmp, &dst).map_err(|e| io("rename", e))?;
                let _ = std::fs::remove_dir_all(&old);
                Ok(())
            }
            Err(e) => Err(io("exchange", e)),
        }
    }

    /// Remove a bundle: it disappears atomically, then its files go.
    pub fn remove(&self, name: &str) -> Result<()> {
        let dir = self.dir_of(name)?;
        if std::fs::symlink_metadata(&dir).is_err() {
            return Err(no_such(name));
        }
        let old = self.old_path(name)?;
        std::fs::rename(&dir, &old)
            .map_err(|e| Error::Config(format!("cannot remove bundle {name}: {e}")))?;
        std::fs::remove_dir_all(&old)
            .map_err(|e| Error::Config(format!("cannot remove {}: {e}", old.display())))
    }

    /// Where a bundle goes aside while it is replaced or removed.
    fn old_path(&self, key: &str) -> Result<PathBuf> {
        let dir = self.dir_of(key)?;
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        Ok(self
            .parent_of(key)?
            .join(format!("{OLD_PREFIX}{name}-{}", crate::sys::random_hex(6)?)))
    }

    /// Leftovers of writers (temp and old directories) older than
    /// `min_age`, in the cache and every user's directory: removed, and
    /// returned. A push still writing (its `.reserve` locked) is kept
    /// whatever its age.
    pub fn remove_leftovers(&self, min_age: std::time::Duration) -> Result<Vec<PathBuf>> {
        let mut out = leftovers_in(&self.root, min_age)?;
        for u in self.users()? {
            if let Some(d) = self.user_dir(&u, false)? {
                out.extend(leftovers_in(&d, min_age)?);
            }
        }
        Ok(out)
    }
}

/// The names in a cache directory (not `.`/`..`), sorted.
fn names_in(dir: &Path) -> Result<Vec<String>> {
    let rd =
        std::fs::read_dir(dir).map_err(|e| unsafe_path(dir, format!("cannot be listed ({e})")))?;
    let mut names: Vec<String> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    names.sort();
    Ok(names)
}

fn open_nofollow(p: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(p)
}

fn leftovers_in(dir: &Path, min_age: std::time::Duration) -> Result<Vec<PathBuf>> {
    {
        let rd = std::fs::read_dir(dir)
            .map_err(|e| unsafe_path(dir, format!("cannot be listed ({e})")))?;
        let now = std::time::SystemTime::now();
        let mut out = Vec::new();
        for e in rd.flatten() {
            let n = e.file_name();
            let n = n.as_bytes();
            if !(n.starts_with(TMP_PREFIX.as_bytes()) || n.starts_with(OLD_PREFIX.as_bytes())) {
                continue;
            }
            let p = e.path();
            let Ok(md) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let age = md
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or_default();
            if age < min_age {
                continue;
            }
            // A live push: its writer holds the lock on .reserve.
            if let Ok(f) = open_nofollow(&p.join(RESERVE)) {
                if !crate::sys::process::flock_try_exclusive(&f).unwrap_or(false) {
                    continue;
                }
            }
            let r = if md.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            match r {
                Ok(()) => out.push(p),
                Err(e) => log::warn!("cannot remove {}: {e}", p.display()),
            }
        }
        Ok(out)
    }
}

impl Bundle {
    pub fn tar_path(&self) -> PathBuf {
        self.dir.join(TAR)
    }

    /// Open image.tar without following a symlink, and check it.
    pub fn open_tar(&self, owner: u32) -> Result<std::fs::File> {
        let p = self.tar_path();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&p)
            .map_err(|e| unsafe_path(&p, format!("cannot be opened ({e})")))?;
        let md = f
            .metadata()
            .map_err(|e| unsafe_path(&p, format!("cannot be read ({e})")))?;
        if !md.is_file() {
            return Err(unsafe_path(&p, "is not a regular file".into()));
        }
        check_owner_mode(&p, &md, owner)?;
        Ok(f)
    }

    pub fn facts(&self) -> crate::core::facts::ImageFacts {
        crate::core::facts::ImageFacts {
            id: self.meta.image_id.clone(),
            entrypoint: self.meta.entrypoint.clone(),
            cmd: self.meta.cmd.clone(),
            workdir: self.meta.workdir.clone(),
            user: self.meta.user.clone(),
            has_shell: self.meta.has_shell,
            volumes: self.meta.volumes.clone(),
            owner: self.meta.owner.clone(),
        }
    }
}

/// Read a small checked file (not a symlink, safe owner and mode).
pub fn read_checked(p: &Path, owner: u32, limit: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(p)
        .map_err(|e| unsafe_path(p, format!("cannot be opened ({e})")))?;
    let md = f
        .metadata()
        .map_err(|e| unsafe_path(p, format!("cannot be read ({e})")))?;
    if !md.is_file() {
        return Err(unsafe_path(p, "is not a regular file".into()));
    }
    check_owner_mode(p, &md, owner)?;
    let mut out = Vec::new();
    f.take(limit)
        .read_to_end(&mut out)
        .map_err(|e| unsafe_path(p, format!("cannot be read ({e})")))?;
    Ok(out)
}

/// renameat2(RENAME_EXCHANGE): swap two directories atomically.
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    crate::sys::process::rename_exchange(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn root() -> tempfile::TempDir {
        // Under /tmp's parents (root-owned) with a private, 0755 root.
        let t = tempfile::Builder::new()
            .prefix("berth-cache-")
            .tempdir_in("/tmp")
            .unwrap();
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        t
    }

    fn meta(name: &str) -> String {
        format!(
            "name = \"{name}\"\nformat = \"docker-save\"\nsource = \"save\"\nimage_id = \"sha256:{}\"\nsha256 = \"\"\nsize = 0\nhas_shell = true\ncreated = \"\"\ncreated_by = \"root\"\n",
            "a".repeat(64)
        )
    }

    fn put(c: &Cache, name: &str) -> PathBuf {
        let t = c.temp_dir(name).unwrap();
        std::fs::write(t.join(META), meta(name)).unwrap();
        std::fs::write(t.join(TAR), b"x").unwrap();
        c.publish(&t, name).unwrap();
        c.root.join(name)
    }

    #[test]
    fn publish_replace_list_remove() {
        // Never a silent pass: the ownership checks need root-owned files.
        assert!(
            crate::sys::is_root(),
            "this test must run as root (tests/run.sh and CI do)"
        );
        let r = root();
        let c = Cache::at(r.path(), 0).unwrap();
        put(&c, "one");
        put(&c, "one"); // atomic replace
        put(&c, "two");
        // A writer's leftover is invisible.
        let t = c.temp_dir("three").unwrap();
        std::fs::write(t.join(META), meta("three")).unwrap();
        let names: Vec<String> = c.list().unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, vec!["one", "two"]);
        assert!(c.get("three").is_err());
        assert!(c.get(".tmp-three").is_err());
        assert_eq!(c.get("one").unwrap().meta.name, "one");
        c.remove("two").unwrap();
        assert_eq!(c.get("two").unwrap_err().exit_code(), 77);
        assert_eq!(
            c.remove_leftovers(std::time::Duration::ZERO).unwrap().len(),
            1
        );
        // Unsafe modes are refused with the path named.
        let d = c.root.join("one");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o775)).unwrap();
        let e = c.get("one").unwrap_err();
        assert_eq!(e.exit_code(), 78);
        assert!(e.to_string().contains(&d.display().to_string()), "{e}");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(d.join(META), std::fs::Permissions::from_mode(0o666)).unwrap();
        assert_eq!(c.get("one").unwrap_err().exit_code(), 78);
        std::fs::set_permissions(d.join(META), std::fs::Permissions::from_mode(0o644)).unwrap();
        nix::unistd::chown(&d, Some(nix::unistd::Uid::from_raw(4242)), None).unwrap();
        assert!(c.get("one").unwrap_err().to_string().contains("uid 4242"));
        // ... unless that uid is the configured owner.
        assert!(Cache::at(r.path(), 4242).unwrap().get("one").is_ok());
        // A group-writable root is refused.
        std::fs::set_permissions(r.path(), std::fs::Permissions::from_mode(0o775)).unwrap();
        assert_eq!(Cache::at(r.path(), 0).err().unwrap().exit_code(), 78);
    }
}
