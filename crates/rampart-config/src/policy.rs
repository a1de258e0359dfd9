//! The policy engine's settings (top-level `policy:`) and the `authz` filter.
//!
//! ```yaml
//! policy:
//!   bundles_dir: examples/policy/tenants   # one subdirectory per tenant, watched for changes
//!   max_cached: 1000                       # compiled bundles kept (LRU)
//!   max_cached_bytes: 268435456            # and their estimated memory
//!   eval_timeout: 100ms                    # a policy running longer is stopped (an error)
//!   decision_log: {path: decisions.log, sample_rate: 0.01}   # path omitted: stdout
//!   vm: true                               # regorus' register VM where it decides as the interpreter does
//!
//! filters:
//!   - authz:
//!       tenant_from: header:x-tenant       # or host, claim:<name>; or a fixed `tenant: acme`
//!       on_error: deny                      # default: fail closed (403); `allow` lets it through
//! ```

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration::parse_duration;
use crate::error::FieldError;

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    /// A directory with one bundle directory per tenant (the tenant is the directory name).
    #[serde(default)]
    pub bundles_dir: Option<String>,
    #[serde(default)]
    pub max_cached: Option<usize>,
    #[serde(default)]
    pub max_cached_bytes: Option<usize>,
    #[serde(default)]
    pub eval_timeout: Option<String>,
    #[serde(default)]
    pub decision_log: Option<RawDecisionLog>,
    /// Decide on regorus' register VM (about twice as fast) for every bundle it decides
    /// exactly as the interpreter does (checked when the bundle is compiled; the others stay
    /// interpreted). Default true; false: the interpreter always.
    #[serde(default)]
    pub vm: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawDecisionLog {
    #[serde(default)]
    pub path: Option<String>,
    /// Fraction of decisions logged (errors always are); default 1.0.
    #[serde(default)]
    pub sample_rate: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawAuthz {
    /// A fixed tenant for this listener or route.
    #[serde(default)]
    pub tenant: Option<String>,
    /// `host` (the Host's first label), `header:<name>` or `claim:<name>` (a verified JWT claim).
    #[serde(default)]
    pub tenant_from: Option<String>,
    /// `deny` (default) or `allow`: what an evaluation error does.
    #[serde(default)]
    pub on_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub bundles_dir: Option<PathBuf>,
    pub max_cached: usize,
    pub max_cached_bytes: usize,
    pub eval_timeout: Duration,
    pub decision_log: Option<DecisionLog>,
    pub vm: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DecisionLog {
    pub path: Option<PathBuf>,
    pub sample_rate: f64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantSource {
    Fixed(String),
    /// The first label of the request's host (`acme.api.example.com` → `acme`).
    Host,
    Header(http::HeaderName),
    Claim(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authz {
    pub tenant: TenantSource,
    /// Fail open on evaluation errors (default: closed).
    pub allow_on_error: bool,
}

fn err(e: &mut Vec<FieldError>, path: String, rule: impl Into<String>) {
    e.push(FieldError {
        path,
        rule: rule.into(),
    });
}

pub fn validate_policy(raw: &RawPolicy) -> (Policy, Vec<FieldError>) {
    let mut e = Vec::new();
    let eval_timeout = match raw.eval_timeout.as_deref().map(parse_duration) {
        None => Duration::from_millis(100),
        Some(Ok(d)) if !d.is_zero() => d,
        Some(Ok(_)) => {
            err(
                &mut e,
                "policy.eval_timeout".into(),
                "must be longer than 0",
            );
            Duration::from_millis(100)
        }
        Some(Err(m)) => {
            err(&mut e, "policy.eval_timeout".into(), m.to_string());
            Duration::from_millis(100)
        }
    };
    if raw.max_cached == Some(0) {
        err(&mut e, "policy.max_cached".into(), "must be at least 1");
    }
    if raw.max_cached_bytes == Some(0) {
        err(
            &mut e,
            "policy.max_cached_bytes".into(),
            "must be at least 1",
        );
    }
    if let Some(d) = &raw.bundles_dir
        && d.is_empty()
    {
        err(&mut e, "policy.bundles_dir".into(), "must not be empty");
    }
    let decision_log = raw.decision_log.as_ref().map(|l| {
        let rate = l.sample_rate.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&rate) {
            err(
                &mut e,
                "policy.decision_log.sample_rate".into(),
                "must be between 0 and 1",
            );
        }
        DecisionLog {
            path: l.path.as_ref().map(PathBuf::from),
            sample_rate: rate.clamp(0.0, 1.0),
        }
    });
    (
        Policy {
            bundles_dir: raw.bundles_dir.as_ref().map(PathBuf::from),
            max_cached: raw.max_cached.unwrap_or(1000).max(1),
            max_cached_bytes: raw.max_cached_bytes.unwrap_or(256 * 1024 * 1024).max(1),
            eval_timeout,
            decision_log,
            vm: raw.vm.unwrap_or(true),
        },
        e,
    )
}

/// Checks an `authz` entry's config; `path` ends in `.authz`.
pub fn parse_authz(path: &str, config: &serde_json::Value) -> Result<Authz, Vec<FieldError>> {
    crate::check::parse_with(path, config, validate_authz)
}

/// `path` is the filter entry's path plus `.authz`.
pub fn validate_authz(path: &str, raw: &RawAuthz) -> (Option<Authz>, Vec<FieldError>) {
    let mut e = Vec::new();
    let tenant = match (&raw.tenant, raw.tenant_from.as_deref()) {
        (Some(_), Some(_)) => {
            err(
                &mut e,
                format!("{path}.tenant"),
                "set tenant or tenant_from, not both",
            );
            None
        }
        (None, None) => {
            err(
                &mut e,
                format!("{path}.tenant_from"),
                "set tenant_from (host, header:<name>, claim:<name>) or a fixed tenant",
            );
            None
        }
        (Some(t), None) if t.is_empty() => {
            err(&mut e, format!("{path}.tenant"), "must not be empty");
            None
        }
        (Some(t), None) => Some(TenantSource::Fixed(t.clone())),
        (None, Some("host")) => Some(TenantSource::Host),
        (None, Some(s)) => {
            if let Some(h) = s.strip_prefix("header:") {
                match http::HeaderName::from_bytes(h.as_bytes()) {
                    Ok(h) => Some(TenantSource::Header(h)),
                    Err(_) => {
                        err(
                            &mut e,
                            format!("{path}.tenant_from"),
                            format!("invalid header name {h:?}"),
                        );
                        None
                    }
                }
            } else if let Some(c) = s.strip_prefix("claim:").filter(|c| !c.is_empty()) {
                Some(TenantSource::Claim(c.to_string()))
            } else {
                err(
                    &mut e,
                    format!("{path}.tenant_from"),
                    format!("unknown source {s:?}; expected host, header:<name> or claim:<name>"),
                );
                None
            }
        }
    };
    let allow_on_error = match raw.on_error.as_deref() {
        None | Some("deny") => false,
        Some("allow") => true,
        Some(other) => {
            err(
                &mut e,
                format!("{path}.on_error"),
                format!("unknown value {other:?}; expected deny or allow"),
            );
            false
        }
    };
    (
        tenant.map(|tenant| Authz {
            tenant,
            allow_on_error,
        }),
        e,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authz_sources_and_errors_name_fields() {
        let ok = |s: &str| {
            let (a, e) = validate_authz(
                "f.authz",
                &RawAuthz {
                    tenant_from: Some(s.into()),
                    ..RawAuthz::default()
                },
            );
            assert!(e.is_empty(), "{e:?}");
            a.unwrap().tenant
        };
        assert_eq!(ok("host"), TenantSource::Host);
        assert_eq!(ok("claim:org"), TenantSource::Claim("org".into()));
        assert!(matches!(ok("header:x-tenant"), TenantSource::Header(_)));
        let (_, e) = validate_authz(
            "f.authz",
            &RawAuthz {
                tenant_from: Some("cookie:x".into()),
                on_error: Some("maybe".into()),
                ..RawAuthz::default()
            },
        );
        let paths: Vec<_> = e.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["f.authz.tenant_from", "f.authz.on_error"]);
        let (_, e) = validate_authz("f.authz", &RawAuthz::default());
        assert_eq!(e[0].path, "f.authz.tenant_from");
    }

    #[test]
    fn policy_limits_are_checked() {
        let (_, e) = validate_policy(&RawPolicy {
            eval_timeout: Some("0s".into()),
            max_cached: Some(0),
            decision_log: Some(RawDecisionLog {
                path: None,
                sample_rate: Some(2.0),
            }),
            ..RawPolicy::default()
        });
        let paths: Vec<_> = e.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "policy.eval_timeout",
                "policy.max_cached",
                "policy.decision_log.sample_rate"
            ]
        );
    }
}
