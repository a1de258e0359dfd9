//! The built-in filters. Each registers a [`FilterFactory`](crate::filter::FilterFactory)
//! under its config name, as a filter from any other crate would.

#[cfg(feature = "policy")]
pub mod authz;
pub mod cors;
pub mod header_mutation;
pub mod jwt;
pub mod rate_limit;
pub mod sidecar_inbound;

use crate::filter::FilterRegistry;

/// Adds the built-in filters to `registry`.
pub fn register_builtins(registry: &mut FilterRegistry) {
    registry
        .register(cors::CorsFactory)
        .register(header_mutation::HeaderMutationFactory)
        .register(jwt::JwtFactory)
        .register(rate_limit::RateLimitFactory)
        .register(sidecar_inbound::SidecarInboundFactory);
    #[cfg(feature = "policy")]
    registry.register(authz::AuthzFactory);
}

/// A registry of the built-in filters.
pub fn builtins() -> FilterRegistry {
    let mut r = FilterRegistry::new();
    register_builtins(&mut r);
    r
}
