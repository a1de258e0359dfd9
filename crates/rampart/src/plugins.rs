//! What this binary plugs into the gateway: the built-in filters and the filter crates it
//! links. A filter crate is added here, by name, with no change to `rampart-proxy`.

use rampart_proxy::Plugins;
use rampart_proxy::filter::FilterRegistry;

/// Every filter a config may name.
pub(crate) fn filters() -> FilterRegistry {
    let mut r = rampart_proxy::filters::builtins();
    r.register(rampart_filter_api_key::ApiKeyFactory);
    r
}

pub(crate) fn plugins() -> Plugins {
    Plugins {
        filters: filters(),
        extra: Vec::new(),
    }
}
