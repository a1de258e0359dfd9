//! Rampart's HTTP filters as Envoy sees them: Envoy's own filter where one does the same
//! job (CORS, a route-wide local rate limit, ext_authz for the policy engine, jwt_authn on a
//! listener), otherwise the Rampart filter itself as an optional filter whose config is a
//! typed struct (an Envoy without it skips it rather than rejecting the listener).
//!
//! Listener filters become HTTP connection manager filters in order. A route's filters
//! become its `typed_per_filter_config`, each wrapped in a `FilterConfig` that enables it
//! there, with a disabled placeholder in the connection manager of every listener using
//! the route table (Envoy runs only filters its connection manager lists).
//!
//! Rampart proxies do not read these back: they take their filters from the settings
//! carried in metadata ([`crate::extra`]), which is the same config.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::{
    GrpcService, RuntimeFractionalPercent, grpc_service,
};
use envoy_types::pb::envoy::config::route::v3::{
    FilterConfig as RouteFilterConfig, RouteMatch, route_match,
};
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::{Cors, CorsPolicy};
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::{
    CheckSettings, ExtAuthz, ExtAuthzPerRoute, ext_authz, ext_authz_per_route,
};
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::{
    JwtAuthentication, JwtHeader, JwtProvider, JwtRequirement, RequirementRule, jwt_provider,
    jwt_requirement, requirement_rule,
};
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, TokenBucket};
use envoy_types::pb::google::protobuf::{Any, BoolValue, UInt32Value};
use envoy_types::util::pack_any;
use prost::Message;
use rampart_config::filters::rate_limit::RateLimitKey;
use rampart_config::model::FilterConfig;
use serde_json::Value;

use crate::extra;

pub(crate) const CORS: &str = "envoy.filters.http.cors";
const RATE_LIMIT: &str = "envoy.filters.http.local_ratelimit";
const EXT_AUTHZ: &str = "envoy.filters.http.ext_authz";
const JWT: &str = "envoy.filters.http.jwt_authn";
/// The cluster Envoy would ask for policy decisions (Envoy's ext_authz gRPC API).
pub const POLICY_CLUSTER: &str = "rampart-policy";
const RAMPART_FILTERS: &str = "type.rampart.dev/rampart.filters.v1.";

/// A listener filter as a connection manager filter.
pub(crate) fn listener_filter(f: &FilterConfig) -> HttpFilter {
    let native = match f.name.as_str() {
        "cors" => Some((CORS, pack_any(Cors::default()))),
        "rate_limit" => local_rate_limit(f).map(|l| (RATE_LIMIT, pack_any(l))),
        "authz" => Some((EXT_AUTHZ, pack_any(ext_authz(&f.config)))),
        "jwt" => jwt(&f.config).map(|j| (JWT, pack_any(j))),
        _ => None,
    };
    match native {
        Some((name, any)) => filter(name, any, false),
        None => rampart_filter(f),
    }
}

/// A route filter: its `typed_per_filter_config` key and value, and the disabled
/// placeholder the connection manager needs for it.
pub(crate) fn route_filter(f: &FilterConfig) -> (String, Any, HttpFilter) {
    let native = match f.name.as_str() {
        "cors" => cors_policy(&f.config).map(|p| (CORS, pack_any(p), pack_any(Cors::default()))),
        "rate_limit" => local_rate_limit(f).map(|l| {
            let placeholder = LocalRateLimit {
                stat_prefix: "rampart_rate_limit".into(),
                ..Default::default()
            };
            (RATE_LIMIT, pack_any(l), pack_any(placeholder))
        }),
        "authz" => Some((
            EXT_AUTHZ,
            pack_any(ext_authz_per_route(&f.config)),
            pack_any(ext_authz(&Value::Null)),
        )),
        _ => None,
    };
    let (key, config, placeholder, optional) = match native {
        Some((name, config, placeholder)) => (name.to_owned(), config, placeholder, false),
        None => {
            let typed = typed_struct(f);
            (format!("rampart.{}", f.name), typed.clone(), typed, true)
        }
    };
    let enabled = RouteFilterConfig {
        config: Some(config),
        is_optional: optional,
        disabled: false,
    };
    let mut placeholder = filter(&key, placeholder, optional);
    placeholder.disabled = true;
    (key, pack_any(enabled), placeholder)
}

/// The CORS policy a virtual host gets from its listener's `cors` filter.
pub(crate) fn listener_cors(filters: &[FilterConfig]) -> Option<Any> {
    let f = filters.iter().find(|f| f.name == "cors")?;
    cors_policy(&f.config).map(pack_any)
}

fn filter(name: &str, any: Any, optional: bool) -> HttpFilter {
    HttpFilter {
        name: name.to_owned(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any)),
        is_optional: optional,
        ..Default::default()
    }
}

/// A filter only Rampart runs: optional, its config a typed struct.
fn rampart_filter(f: &FilterConfig) -> HttpFilter {
    filter(&format!("rampart.{}", f.name), typed_struct(f), true)
}

fn typed_struct(f: &FilterConfig) -> Any {
    let value = match &f.config {
        Value::Object(o) => extra::to_struct(o.clone()),
        other => extra::to_struct(serde_json::Map::from_iter([(
            "value".to_owned(),
            other.clone(),
        )])),
    };
    let typed = extra::TypedStruct {
        type_url: format!("{RAMPART_FILTERS}{}", f.name),
        value: Some(value),
    };
    Any {
        type_url: extra::TYPED_STRUCT.into(),
        value: typed.encode_to_vec(),
    }
}

fn cors_policy(config: &Value) -> Option<CorsPolicy> {
    let c = rampart_config::filters::cors::parse("cors", config).ok()?;
    let origins = if c.allow_any_origin {
        vec![StringMatcher {
            match_pattern: Some(string_matcher::MatchPattern::Prefix(String::new())),
            ..Default::default()
        }]
    } else {
        c.allow_origins
            .iter()
            .map(|o| StringMatcher {
                match_pattern: Some(string_matcher::MatchPattern::Exact(o.clone())),
                ..Default::default()
            })
            .collect()
    };
    Some(CorsPolicy {
        allow_origin_string_match: origins,
        allow_methods: c.allow_methods,
        allow_headers: c.allow_headers,
        expose_headers: c.expose_headers,
        max_age: c
            .max_age
            .map(|d| d.as_secs().to_string())
            .unwrap_or_default(),
        allow_credentials: Some(BoolValue {
            value: c.allow_credentials,
        }),
        ..Default::default()
    })
}

/// Envoy's local rate limit is one bucket per filter: the same as a route-wide Rampart
/// limit, not a per-client one (those stay Rampart filters).
fn local_rate_limit(f: &FilterConfig) -> Option<LocalRateLimit> {
    let r = rampart_config::filters::rate_limit::parse("rate_limit", &f.config).ok()?;
    if r.key != RateLimitKey::Route {
        return None;
    }
    let all = || RuntimeFractionalPercent {
        default_value: Some(FractionalPercent {
            numerator: 100,
            denominator: 0, // HUNDRED
        }),
        runtime_key: String::new(),
    };
    Some(LocalRateLimit {
        stat_prefix: "rampart_rate_limit".into(),
        token_bucket: Some(TokenBucket {
            max_tokens: r.burst,
            tokens_per_fill: Some(UInt32Value { value: r.rate }),
            fill_interval: Some(crate::pbtime::duration(r.per)),
        }),
        filter_enabled: Some(all()),
        filter_enforced: Some(all()),
        ..Default::default()
    })
}

/// The policy engine as Envoy's external authorization (gRPC, API v3).
fn ext_authz(config: &Value) -> ExtAuthz {
    ExtAuthz {
        services: Some(ext_authz::Services::GrpcService(GrpcService {
            target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                grpc_service::EnvoyGrpc {
                    cluster_name: POLICY_CLUSTER.into(),
                    ..Default::default()
                },
            )),
            ..Default::default()
        })),
        transport_api_version: 2, // V3
        failure_mode_allow: config.get("on_error").and_then(Value::as_str) == Some("allow"),
        ..Default::default()
    }
}

/// A route's tenant choice, as the context the authorization service is sent.
fn ext_authz_per_route(config: &Value) -> ExtAuthzPerRoute {
    let mut context = HashMap::new();
    for k in ["tenant", "tenant_from"] {
        if let Some(v) = config.get(k).and_then(Value::as_str) {
            context.insert(k.to_owned(), v.to_owned());
        }
    }
    ExtAuthzPerRoute {
        r#override: Some(ext_authz_per_route::Override::CheckSettings(
            CheckSettings {
                context_extensions: context,
                ..Default::default()
            },
        )),
    }
}

/// A listener's JWT check as jwt_authn: one provider, required on every path (allowed to
/// be missing when the Rampart filter is optional).
fn jwt(config: &Value) -> Option<JwtAuthentication> {
    let j = rampart_config::jwt::parse("jwt", config).ok()?;
    let jwks = match (&j.jwks, config.get("jwks_url").and_then(Value::as_str)) {
        (_, Some(url)) => jwt_provider::JwksSourceSpecifier::RemoteJwks(remote_jwks(url)),
        (Some(_), None) => {
            let file = config.get("jwks_file").and_then(Value::as_str)?;
            jwt_provider::JwksSourceSpecifier::LocalJwks(
                envoy_types::pb::envoy::config::core::v3::DataSource {
                    specifier: Some(
                        envoy_types::pb::envoy::config::core::v3::data_source::Specifier::Filename(
                            file.to_owned(),
                        ),
                    ),
                    ..Default::default()
                },
            )
        }
        // An HS256 secret has no Envoy equivalent (Envoy takes keys as JWKS only).
        (None, None) => return None,
    };
    let provider = JwtProvider {
        issuer: j.issuer.clone().unwrap_or_default(),
        audiences: j.audiences.clone(),
        from_headers: vec![JwtHeader {
            name: j.from_header.as_str().to_owned(),
            value_prefix: if j.bearer_scheme() {
                "Bearer ".into()
            } else {
                String::new()
            },
        }],
        forward_payload_header: j
            .forward_claims_header
            .as_ref()
            .map(|h| h.as_str().to_owned())
            .unwrap_or_default(),
        jwks_source_specifier: Some(jwks),
        ..Default::default()
    };
    let requires = if j.optional {
        jwt_requirement::RequiresType::RequiresAny(
            envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::JwtRequirementOrList {
                requirements: vec![
                    JwtRequirement {
                        requires_type: Some(jwt_requirement::RequiresType::ProviderName("rampart".into())),
                    },
                    JwtRequirement {
                        requires_type: Some(jwt_requirement::RequiresType::AllowMissing(Default::default())),
                    },
                ],
            },
        )
    } else {
        jwt_requirement::RequiresType::ProviderName("rampart".into())
    };
    Some(JwtAuthentication {
        providers: HashMap::from([("rampart".to_owned(), provider)]),
        rules: vec![RequirementRule {
            r#match: Some(RouteMatch {
                path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                ..Default::default()
            }),
            requirement_type: Some(requirement_rule::RequirementType::Requires(
                JwtRequirement {
                    requires_type: Some(requires),
                },
            )),
        }],
        ..Default::default()
    })
}

/// Envoy fetches remote keys through a cluster; the URL's authority names it.
fn remote_jwks(
    url: &str,
) -> envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::RemoteJwks {
    let authority = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::RemoteJwks {
        http_uri: Some(envoy_types::pb::envoy::config::core::v3::HttpUri {
            uri: url.to_owned(),
            timeout: Some(crate::pbtime::duration(std::time::Duration::from_secs(5))),
            http_upstream_type: Some(
                envoy_types::pb::envoy::config::core::v3::http_uri::HttpUpstreamType::Cluster(
                    authority,
                ),
            ),
        }),
        ..Default::default()
    }
}
