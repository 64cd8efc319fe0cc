//! The node's filesystem as the job user sees it: the planner's
//! [`HostFs`] on a real node, and the user's env files, both read with the
//! user's own credentials (see [`crate::sys::as_user`]).

use crate::core::error::{Error, Result};
use crate::core::identity::Identity;
use crate::core::plan::HostFs;
use crate::core::request::{self, Request};
use crate::sys::UserView;
use std::cell::RefCell;
use std::path::{Path, PathBuf};

/// The node's filesystem for the planner, as the job user sees it: every
/// path is resolved, inspected and checked with the user's own
/// credentials (by a helper running as the user when berth is root, see
/// `sys::as_user`), never as root, so that a denial cannot tell what lies
/// in a directory the user cannot search.
#[derive(Default)]
pub struct RealFs {
    /// Whose view; `None`: the calling process's own (berth not root).
    user: Option<(u32, u32, Vec<u32>)>,
    /// The launcher will open every volume as the user when it pins it
    /// (the same check, made race-free): don't check access twice.
    access_checked_by_pin: bool,
    view: RefCell<Option<UserView>>,
    /// Why the user's view could not answer (the planner only sees an
    /// I/O error): see [`RealFs::failure`].
    failure: RefCell<Option<Error>>,
}

impl RealFs {
    /// The filesystem as `id` sees it.
    pub fn as_user(id: &Identity, access_checked_by_pin: bool) -> RealFs {
        RealFs {
            user: Some((id.uid, id.gid, id.groups.iter().map(|g| g.gid).collect())),
            access_checked_by_pin,
            ..RealFs::default()
        }
    }

    /// An internal failure behind an answer the planner got: it outranks
    /// whatever the planner made of that answer.
    pub fn failure(&self) -> Result<()> {
        match self.failure.borrow_mut().take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn ask<T>(&self, f: impl FnOnce(&mut UserView) -> Result<T>) -> Result<T> {
        let mut view = self.view.borrow_mut();
        if view.is_none() {
            *view = Some(match &self.user {
                Some((uid, gid, groups)) => UserView::new(*uid, *gid, groups)?,
                None if !crate::sys::is_root() => UserView::new(crate::sys::real_uid(), 0, &[])?,
                None => {
                    return Err(Error::Internal(
                        "root berth must name the user whose view of the filesystem it plans with"
                            .into(),
                    ))
                }
            });
        }
        f(view.as_mut().expect("set above"))
    }

    /// An answer of the user's view, an internal failure kept aside.
    fn io<T>(
        &self,
        f: impl FnOnce(&mut UserView) -> Result<std::io::Result<T>>,
    ) -> std::io::Result<T> {
        self.ask(f).unwrap_or_else(|e| {
            let shown = std::io::Error::other(e.to_string());
            self.failure.borrow_mut().get_or_insert(e);
            Err(shown)
        })
    }
}

impl HostFs for RealFs {
    fn canonicalize(&self, p: &Path) -> std::io::Result<PathBuf> {
        self.io(|v| v.resolve(p))
    }
    fn is_dir(&self, p: &Path) -> std::io::Result<bool> {
        self.io(|v| v.is_dir(p))
    }
    fn user_can_access(&self, id: &Identity, paths: &[PathBuf]) -> Result<Vec<bool>> {
        if self.access_checked_by_pin {
            return Ok(vec![true; paths.len()]);
        }
        let same = match &self.user {
            Some((uid, gid, _)) => *uid == id.uid && *gid == id.gid,
            None => !crate::sys::is_root() && crate::sys::real_uid() == id.uid,
        };
        if !same {
            return crate::sys::user_can_access(id, paths);
        }
        self.ask(|v| paths.iter().map(|p| v.can_access(p)).collect())
    }
}

/// `LSF_DOCKER_ENV_FILE`: read with the user's credentials, never berth's.
pub(crate) fn read_env_files(id: &Identity, req: &Request) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for f in &req.env_files {
        if !f.is_absolute() {
            return Err(Error::Malformed(format!(
                "LSF_DOCKER_ENV_FILE entry {} must be an absolute path",
                f.display()
            )));
        }
        let bytes = crate::sys::read_file_as_user(id, f, 1 << 20)?;
        let text = String::from_utf8(bytes)
            .map_err(|_| Error::Malformed(format!("env file {} is not UTF-8", f.display())))?;
        out.extend(request::parse_env_file(&f.display().to_string(), &text)?);
    }
    Ok(out)
}
