//! Files berth trusts: owned by root (or a named owner) and not writable by
//! group or others, checked up every parent directory; and the policy file,
//! loaded through that check and parsed by [`Policy::parse`].

use crate::core::error::{Error, Result};
use crate::core::policy::Policy;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

impl Policy {
    /// Load a policy file after checking that it and every parent directory
    /// are owned by root and not writable by group or others.
    pub fn load(path: &Path) -> Result<Policy> {
        check_trusted_path(path, 0)?;
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Config(format!(
                "cannot read policy {}: {e}; install one (see policy/default.toml) or pass --policy",
                path.display()
            ))
        })?;
        Policy::parse(&text, &path.display().to_string())
    }
}

/// Refuse a file unless it and all its parents are owned by `owner` or root
/// and not writable by group or others (a sticky root-owned directory such as
/// /tmp is accepted: others cannot replace what root put there).
pub fn check_trusted_path(path: &Path, owner: u32) -> Result<()> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| Error::internal("current directory", e))?
            .join(path)
    };
    let mut cur = Some(abs.as_path());
    let mut first = true;
    while let Some(p) = cur {
        let md = std::fs::symlink_metadata(p)
            .map_err(|e| Error::Config(format!("cannot stat {}: {e}", p.display())))?;
        if first && md.file_type().is_symlink() {
            // Follow a symlinked file once (e.g. /etc/berth/policy.toml ->
            // a config-management copy) but check its target the same way.
            let target = std::fs::canonicalize(p)
                .map_err(|e| Error::Config(format!("cannot resolve {}: {e}", p.display())))?;
            check_trusted_path(p.parent().unwrap_or(Path::new("/")), owner)?;
            return check_trusted_path(&target, owner);
        }
        if md.uid() != 0 && md.uid() != owner {
            return Err(Error::Config(format!(
                "{} is owned by uid {}, not root; chown root:root it",
                p.display(),
                md.uid()
            )));
        }
        let sticky = md.mode() & 0o1000 != 0 && md.is_dir();
        if md.mode() & 0o022 != 0 && (first || !sticky) {
            return Err(Error::Config(format!(
                "{} is writable by group or others (mode {:o}); chmod go-w it",
                p.display(),
                md.mode() & 0o7777
            )));
        }
        first = false;
        cur = p.parent();
    }
    Ok(())
}
