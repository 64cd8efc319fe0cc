//! Users' bundle commands in the broker (SPEC §15): `push`, `list`, `rm`
//! for the peer, whose identity is SO_PEERCRED's.
//!
//! A push never opens a path as root: the user's own `berth bundle push`
//! opened the tar with the user's credentials and passed the descriptor.
//! Here it must be a readable regular file (not a FIFO, a device, a socket,
//! a directory or an O_PATH handle); it is read with pread up to the size
//! fstat gave (the user may share the offset, or grow the file), written
//! into a private temp directory under the user's cache directory while
//! hashing, checked exactly like an admin's `bundle create`, and published
//! by one atomic rename. The quota is decided, under the user's lock,
//! before a byte is written; the bytes a running push may write are
//! reserved (`.reserve`, under its flock) until it publishes or dies.

use super::cache::{Cache, RESERVE};
use super::create::{self, Source, Spec, TempGuard, Watch};
use crate::audit::Record;
use crate::broker::proto::{self, BundleOp, DaemonMsg};
use crate::core::error::{Error, Result};
use crate::core::identity::{self, Identity};
use crate::core::policy::Policy;
use crate::core::share::{self, Key};
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Most pushes one user runs at once, and all users together: a push is
/// long I/O on the shared filesystem, and a broker slot while it lasts.
const MAX_PUSHES_PER_UID: usize = 2;
const MAX_PUSHES: usize = 8;

/// How long a write to a client may block.
const WRITE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

static PUSHES: Mutex<Option<HashMap<u32, usize>>> = Mutex::new(None);

/// A push slot, released on drop.
struct Slot(u32);

impl Slot {
    fn take(uid: u32) -> Result<Slot> {
        let mut g = PUSHES.lock().unwrap_or_else(|e| e.into_inner());
        let m = g.get_or_insert_with(HashMap::new);
        let all: usize = m.values().sum();
        let mine = m.get(&uid).copied().unwrap_or(0);
        if mine >= MAX_PUSHES_PER_UID || all >= MAX_PUSHES {
            return Err(Error::Unavailable(format!(
                "too many bundle pushes are running (at most {MAX_PUSHES_PER_UID} per user, {MAX_PUSHES} on this node); wait for one to finish and push again"
            )));
        }
        *m.entry(uid).or_insert(0) += 1;
        Ok(Slot(uid))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut g = PUSHES.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = g.as_mut() {
            if let Some(n) = m.get_mut(&self.0) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&self.0);
                }
            }
        }
    }
}

/// What the broker answers: text for stdout and an exit code.
pub struct Answer {
    pub code: i32,
    pub text: String,
}

/// Serve one bundle command for the peer `uid`.
pub fn serve(
    policy: &Policy,
    uid: u32,
    op: &BundleOp,
    fds: Vec<OwnedFd>,
    stream: &UnixStream,
    audit: &mut dyn FnMut(&Record),
) -> Result<Answer> {
    // A client that stops reading (progress, a long list) must not hold
    // a broker thread, a push slot or a reservation.
    let _ = stream.set_write_timeout(Some(WRITE_DEADLINE));
    let id = identity::resolve(&crate::sys::nss::Nss, policy, uid, None)?;
    match op {
        BundleOp::Push {
            name,
            export,
            changes,
            share,
        } => {
            let mut rec = Record::new("push", "allow");
            rec.caller_uid = uid;
            rec.user = Some(id.name.clone());
            rec.uid = Some(id.uid);
            rec.image = Some(format!("bundle:{}/{name}", id.name));
            let started = std::time::Instant::now();
            let r = push(
                policy,
                &id,
                name,
                *export,
                changes,
                share.as_deref(),
                fds,
                stream,
            );
            match &r {
                Ok(m) => {
                    rec.image_id = Some(m.image_id.clone());
                    rec.detail = Some(format!(
                        "pushed {} bytes in {} ms, share {}",
                        m.size,
                        started.elapsed().as_millis(),
                        m.owner
                            .as_ref()
                            .map(|o| o.share.to_string())
                            .unwrap_or_default()
                    ));
                }
                Err(e) => rec.refused(e),
            }
            audit(&rec);
            let m = r?;
            Ok(Answer {
                code: 0,
                text: format!(
                    "bundle {} published: {} bytes, image {}, shell {}, {}{}\nrun it with LSB_CONTAINER_IMAGE=bundle:~/{name} (or --container=bundle:~/{name})\n",
                    m.name,
                    m.size,
                    m.image_id,
                    if m.has_shell { "yes" } else { "no" },
                    match m.owner.as_ref().map(|o| &o.share) {
                        Some(share::Share::Group { name, .. }) => format!("shared with group {name}"),
                        Some(share::Share::All) => "shared with all users".to_string(),
                        _ => "private".to_string(),
                    },
                    crate::bundle::progress::rate_suffix(m.size, started.elapsed()),
                ),
            })
        }
        BundleOp::List { json } => list(policy, &id, *json),
        BundleOp::Rm { name } => {
            let key = own_key(&id, name)?;
            let cache = Cache::open(policy)?;
            if cache.user_dir(&id.name, false)?.is_none() {
                return Err(crate::core::error::Denial::new(
                    "bundles.cache",
                    format!("bundle:{key}"),
                    format!("there is no bundle {key:?} in the bundle cache"),
                    "berth bundle list shows your bundles",
                )
                .into());
            }
            let _lock = user_lock(&cache, &id.name)?;
            cache.remove(&key)?;
            let mut rec = Record::new("bundle-rm", "allow");
            rec.caller_uid = uid;
            rec.user = Some(id.name.clone());
            rec.uid = Some(id.uid);
            rec.image = Some(format!("bundle:{key}"));
            audit(&rec);
            Ok(Answer {
                code: 0,
                text: format!("removed bundle {key}\n"),
            })
        }
    }
}

/// `NAME`, `~/NAME` or `ME/NAME` as the key of one of `id`'s own bundles.
fn own_key(id: &Identity, name: &str) -> Result<String> {
    // A bare NAME is the user's own (even `users`, a valid name in a
    // user's directory).
    if crate::core::image::valid_bundle_name(name) {
        return Ok(format!("{}/{name}", id.name));
    }
    match share::parse_key(name) {
        Some(Key::Site(n)) | Some(Key::Mine(n)) => Ok(format!("{}/{n}", id.name)),
        Some(Key::User(u, n)) if u == id.name => Ok(format!("{u}/{n}")),
        Some(Key::User(u, _)) => Err(crate::core::error::Denial::new(
            "bundles.share",
            format!("bundle:{name}"),
            format!("bundle {name} is {u}'s: only its owner (or root) may remove it"),
            "remove your own bundles (berth bundle list shows them)",
        )
        .into()),
        None => Err(Error::Malformed(format!(
            "bundle name {name:?} must be NAME or ~/NAME, NAME 1-64 of A-Z a-z 0-9 . _ - starting with a letter or digit"
        ))),
    }
}

/// The user's lock (`<cache>/users/<user>/.lock`): quota decisions and
/// publishes of one user's pushes happen one at a time.
fn user_lock(cache: &Cache, user: &str) -> Result<File> {
    let dir = cache.user_dir(user, true)?.unwrap_or_default();
    crate::sys::process::open_locked(&dir.join(".lock"))
}

/// The descriptor a client passed as its tar: a regular file open for
/// reading, and its size now.
pub fn source_file(fd: OwnedFd) -> Result<(File, u64)> {
    let refuse = |why: String| {
        Error::Malformed(format!(
            "the tar to push {why}; give a docker save (or export) tar file you can read"
        ))
    };
    use std::os::fd::AsRawFd;
    let fl = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)
        .map_err(|e| refuse(format!("cannot be examined ({e})")))?;
    let fl = nix::fcntl::OFlag::from_bits_truncate(fl);
    if fl.contains(nix::fcntl::OFlag::O_PATH) {
        return Err(refuse(
            "was passed as a path handle, not opened for reading".into(),
        ));
    }
    if fl & nix::fcntl::OFlag::O_ACCMODE == nix::fcntl::OFlag::O_WRONLY {
        return Err(refuse("was opened for writing only".into()));
    }
    let f = File::from(fd);
    let md = f
        .metadata()
        .map_err(|e| refuse(format!("cannot be examined ({e})")))?;
    let ft = md.file_type();
    if !ft.is_file() {
        let kind = if ft.is_fifo() {
            "a pipe (FIFO)"
        } else if ft.is_char_device() || ft.is_block_device() {
            "a device"
        } else if ft.is_socket() {
            "a socket"
        } else if ft.is_dir() {
            "a directory"
        } else {
            "not a regular file"
        };
        return Err(refuse(format!("is {kind}, not a regular file")));
    }
    Ok((f, md.len()))
}

#[allow(clippy::too_many_arguments)]
fn push(
    policy: &Policy,
    id: &Identity,
    name: &str,
    export: bool,
    changes: &[String],
    share_arg: Option<&str>,
    fds: Vec<OwnedFd>,
    stream: &UnixStream,
) -> Result<super::Meta> {
    let fd = fds
        .into_iter()
        .next()
        .ok_or_else(|| Error::Malformed("a push passes its tar as the first descriptor".into()))?;
    let (file, len) = source_file(fd)?;
    if !export && !changes.is_empty() {
        return Err(Error::Malformed(
            "--change applies to --from-export only (it would change the image id)".into(),
        ));
    }
    let share = share_arg.map(|s| {
        let gid = s
            .strip_prefix("group:")
            .and_then(|g| nix::unistd::Group::from_name(g).ok().flatten())
            .map(|g| g.gid.as_raw());
        (s.to_string(), gid)
    });
    let req = share::PushRequest {
        name: name.to_string(),
        share,
        size: len,
    };
    // Nothing touches the cache for a push the policy refuses.
    share::plan_push(&policy.bundles, id, &req, &share::Usage::default())?;
    let _slot = Slot::take(id.uid)?;
    let parsed = create::parse_changes(changes)?;
    let cache = Cache::open(policy)?;

    // Decide the quota and reserve the space, under the user's lock.
    let lock = user_lock(&cache, &id.name)?;
    let usage = share::Usage {
        bundles: cache
            .list_user(&id.name)?
            .into_iter()
            .map(|(k, b)| {
                let n = k.rsplit('/').next().unwrap_or_default().to_string();
                // An unusable bundle still takes its space.
                let size = b
                    .map(|b| b.meta.size)
                    .unwrap_or_else(|_| cache.disk_size(&k));
                (n, size)
            })
            .collect(),
        reserved: cache.reserved(&id.name)?,
    };
    let plan = share::plan_push(&policy.bundles, id, &req, &usage)?;
    let tmp = cache.temp_dir(&plan.key)?;
    let guard = TempGuard(Some(tmp.clone()));
    let reserve = tmp.join(RESERVE);
    let reservation = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&reserve)
        .map_err(|e| Error::Config(format!("cannot create {}: {e}", reserve.display())))?;
    crate::sys::process::flock_exclusive(&reservation)
        .map_err(|e| Error::internal("flock .reserve", e))?;
    {
        use std::io::Write;
        (&reservation)
            .write_all(plan.reserve.to_string().as_bytes())
            .map_err(|e| Error::Config(format!("cannot write {}: {e}", reserve.display())))?;
    }
    drop(lock);

    // The client's end: any frame (a signal it was sent) or its going
    // away abandons the push.
    let abort = Arc::new(AtomicBool::new(false));
    if let Ok(mut r) = stream.try_clone() {
        let a = abort.clone();
        let _ = std::thread::Builder::new()
            .name("push-client".into())
            .spawn(move || {
                let _ = r.set_read_timeout(None);
                let _ = proto::read_frame::<proto::ClientMsg>(&mut r, proto::MAX_FRAME);
                a.store(true, Ordering::SeqCst);
            });
    }
    let ticker_abort = abort.clone();
    let mut tick = |done: u64, total: u64| {
        let mut s = stream;
        // A client that does not take its progress is gone.
        if proto::write_frame(&mut s, &DaemonMsg::Progress { done, total }).is_err() {
            ticker_abort.store(true, Ordering::SeqCst);
        }
    };
    let spec = Spec {
        key: &plan.key,
        label: format!("push:{}", if export { "export" } else { "save" }),
        changes: &parsed,
        created_by: id.name.clone(),
        owner: Some(plan.owner.clone()),
        limit: Some(plan.reserve),
    };
    let src = if export {
        Source::Export { file: &file, len }
    } else {
        Source::Save { file: &file, len }
    };
    let meta = create::write_bundle(
        policy,
        &tmp,
        src,
        &spec,
        &mut Watch {
            tick: &mut tick,
            abort: Some(&abort),
        },
    )?;
    if abort.load(Ordering::SeqCst) {
        return Err(Error::Unavailable(
            "the push was abandoned by its client; nothing was published".into(),
        ));
    }
    tick(len, len);
    // Publish under the user's lock: a quota decision sees this push
    // either reserved or published, never neither.
    let _lock = user_lock(&cache, &id.name)?;
    std::fs::remove_file(&reserve)
        .map_err(|e| Error::Config(format!("cannot remove {}: {e}", reserve.display())))?;
    cache.publish(&tmp, &plan.key)?;
    guard.keep();
    drop(reservation);
    Ok(meta)
}

/// One line of `bundle list`.
fn row(key: &str, b: &Result<super::cache::Bundle>, note: &str) -> String {
    match b {
        Ok(b) => format!(
            "{:<40} {:>10}  {:<19}  {:<20} {}",
            key,
            crate::core::size::approx(b.meta.size),
            &b.meta.image_id[..19.min(b.meta.image_id.len())],
            note,
            b.meta.created
        ),
        Err(e) => format!("{key:<40} unusable: {e}"),
    }
}

/// The peer's view: the site's bundles, its own, and those shared with it.
fn list(policy: &Policy, id: &Identity, json: bool) -> Result<Answer> {
    let cache = Cache::open(policy)?;
    let mut rows: Vec<(String, Result<super::cache::Bundle>, String)> = Vec::new();
    for (k, b) in cache.list()? {
        rows.push((k, b, "site".into()));
    }
    let mut held = 0u64;
    if policy.bundles.user_push {
        for u in cache.users()? {
            // Another user's unreadable directory is theirs to fix, not a
            // reason to list nothing (nor to name its path to everyone).
            let theirs = match cache.list_user(&u) {
                Ok(v) => v,
                Err(e) if u == id.name => return Err(e),
                Err(e) => {
                    log::warn!("bundle list: skipping user {u}: {e}");
                    continue;
                }
            };
            for (k, b) in theirs {
                let Ok(bb) = &b else {
                    if u == id.name {
                        rows.push((k, b, "yours".into()));
                    }
                    continue;
                };
                let Some(owner) = &bb.meta.owner else {
                    continue;
                };
                if u == id.name {
                    held += bb.meta.size;
                    let note = format!("yours, {}", owner.share);
                    rows.push((k, b, note));
                } else if share::may_run(&policy.bundles, id, &k, owner).is_ok() {
                    let note = format!("shared, {}", owner.share);
                    rows.push((k, b, note));
                }
            }
        }
    }
    if json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|(k, b, note)| match b {
                Ok(b) => {
                    let mut v = serde_json::to_value(&b.meta).unwrap_or_default();
                    v["key"] = serde_json::json!(k);
                    v["access"] = serde_json::json!(note);
                    v
                }
                Err(e) => serde_json::json!({"key": k, "error": e.to_string()}),
            })
            .collect();
        return Ok(Answer {
            code: 0,
            text: format!("{}\n", serde_json::to_string_pretty(&v).unwrap_or_default()),
        });
    }
    let mut text = format!(
        "{:<40} {:>10}  {:<19}  {:<20} CREATED\n",
        "BUNDLE", "SIZE", "IMAGE ID", "ACCESS"
    );
    for (k, b, note) in &rows {
        text.push_str(&row(k, b, note));
        text.push('\n');
    }
    if policy.bundles.user_push {
        let quota = crate::core::size::parse(&policy.bundles.user_quota).unwrap_or(0);
        text.push_str(&format!(
            "{}'s bundles: {} of a {} quota; run yours as bundle:~/NAME, others' as bundle:USER/NAME\n",
            id.name,
            crate::core::size::approx(held),
            crate::core::size::approx(quota)
        ));
    }
    Ok(Answer { code: 0, text })
}
