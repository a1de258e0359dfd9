//! What `rampart up` adds to a config before serving it: the embedded demo with its
//! tenants' policy bundles, and an admin token.

#[cfg(feature = "full")]
use anyhow::Context;
use anyhow::Result;
use rampart_config::Config;

/// The demo config `rampart up` runs when given no `--config`.
pub(crate) const DEMO_CONFIG: &str = include_str!("../../../examples/rampart.yaml");

/// The example tenants' bundles, embedded for `rampart up`.
#[cfg(feature = "full")]
const DEMO_BUNDLES: &[(&str, &str)] = &[
    (
        "acme/.manifest",
        include_str!("../../../examples/policy/tenants/acme/.manifest"),
    ),
    (
        "acme/authz.rego",
        include_str!("../../../examples/policy/tenants/acme/authz.rego"),
    ),
    (
        "acme/authz_test.rego",
        include_str!("../../../examples/policy/tenants/acme/authz_test.rego"),
    ),
    (
        "acme/data.json",
        include_str!("../../../examples/policy/tenants/acme/data.json"),
    ),
    (
        "globex/authz.rego",
        include_str!("../../../examples/policy/tenants/globex/authz.rego"),
    ),
    (
        "globex/authz_test.rego",
        include_str!("../../../examples/policy/tenants/globex/authz_test.rego"),
    ),
    (
        "globex/data.json",
        include_str!("../../../examples/policy/tenants/globex/data.json"),
    ),
];

/// Gives the admin endpoint a token file (created on first start) unless the config has one.
pub(crate) fn admin_token(cfg: &mut Config, path: &std::path::Path) -> Result<()> {
    let Some(admin) = cfg.admin.as_mut() else {
        return Ok(());
    };
    if admin.token_file.is_some() {
        return Ok(());
    }
    crate::admin_token::ensure(path)?;
    admin.token_file = Some(path.to_path_buf());
    if let Some(raw) = cfg.raw.admin.as_mut() {
        raw.token_file = Some(path.display().to_string());
    }
    tracing::info!(
        token_file = %path.display(),
        "admin API: changes need `Authorization: Bearer <token>` with the token in this file"
    );
    Ok(())
}

/// Writes the demo bundles into `dir` (files already there are kept, so edits survive a
/// restart) and points the demo config's policy engine at it.
#[cfg(feature = "full")]
pub(crate) fn demo_policy(cfg: &mut Config, dir: &std::path::Path) -> Result<()> {
    for (rel, text) in DEMO_BUNDLES {
        let path = dir.join(rel);
        if path.exists() {
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(p) = cfg.policy.as_mut() {
        p.bundles_dir = Some(dir.to_path_buf());
    }
    if let Some(p) = cfg.raw.policy.as_mut() {
        p.bundles_dir = Some(dir.display().to_string());
    }
    Ok(())
}

/// The small build has no policy engine: the demo runs without its authz routes.
#[cfg(not(feature = "full"))]
pub(crate) fn demo_policy(cfg: &mut Config, _dir: &std::path::Path) -> Result<()> {
    tracing::warn!("this build has no policy engine; the demo's tenant routes are left out");
    cfg.policy = None;
    for t in &mut cfg.route_tables {
        t.virtual_hosts.retain(|vh| {
            !vh.routes
                .iter()
                .any(|r| r.filters.iter().any(|f| f.name == "authz"))
        });
    }
    Ok(())
}
