//! The admin API's bearer token: created by `rampart up` on first start (random, in a file
//! only its owner can read), read by CLI commands that change state through the admin API.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{Context, Result};

/// Where `rampart up` keeps the token, and where the CLI looks for it.
#[cfg(feature = "full")]
pub(crate) const DEFAULT_TOKEN_FILE: &str = "rampart-data/admin.token";

/// The environment variable that overrides the token file for CLI commands.
#[cfg(feature = "full")]
pub(crate) const TOKEN_ENV: &str = "RAMPART_ADMIN_TOKEN";

/// Creates `path` with a fresh random token (mode 0600) unless it exists.
pub(crate) fn ensure(path: &Path) -> Result<()> {
    if path.exists() {
        return Ok(());
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut raw = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .context("cannot read /dev/urandom for the admin token")?;
    let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    write_private(path, &token)
}

/// Creates `path` (which must not exist) readable by its owner only, holding `secret`.
pub(crate) fn write_private(path: &Path, secret: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    writeln!(f, "{secret}").with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// The token a CLI command sends: `RAMPART_ADMIN_TOKEN`, else the token file. (The small
/// build has no command that changes state through the admin API.)
#[cfg(feature = "full")]
pub(crate) fn for_client(path: &Path) -> Result<String> {
    if let Ok(t) = std::env::var(TOKEN_ENV)
        && !t.trim().is_empty()
    {
        return Ok(t.trim().to_owned());
    }
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read the admin token from {} (set {TOKEN_ENV} or --token-file)",
            path.display()
        )
    })?;
    let t = text.trim();
    if t.is_empty() {
        anyhow::bail!("{} is empty", path.display());
    }
    Ok(t.to_owned())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn created_once_private_and_random() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/admin.token");
        ensure(&path).unwrap();
        let first = std::fs::read_to_string(&path).unwrap();
        assert_eq!(first.trim().len(), 64);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        ensure(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), first, "kept");
        let other = dir.path().join("other.token");
        ensure(&other).unwrap();
        assert_ne!(std::fs::read_to_string(&other).unwrap(), first);
    }
}
