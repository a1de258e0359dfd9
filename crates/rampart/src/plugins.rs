//! What this binary plugs into the gateway: the built-in filters and the filter crates it
//! links. A filter crate is added here, by name, with no change to `rampart-proxy`.

use rampart_proxy::Plugins;
use rampart_proxy::filter::FilterRegistry;

/// Every filter a config may name.
pub(crate) fn filters() -> FilterRegistry {
    let mut r = rampart_proxy::filters::builtins();
    r.register(rampart_filter_api_key::ApiKeyFactory);
    #[cfg(feature = "full")]
    r.register(rampart_filter_wasm::WasmFactory);
    #[cfg(feature = "full")]
    r.register(rampart_filter_openapi::OpenApiFactory);
    r
}

pub(crate) fn plugins() -> Plugins {
    Plugins {
        filters: filters(),
        extra: Vec::new(),
        after_install: cfg!(feature = "mimalloc").then_some(reclaim as fn()),
        functions: None,
        services: Vec::new(),
        connection_labels: None,
        admin_pages: Vec::new(),
    }
}

/// Returns the pages freed while a config was built to the OS: mimalloc keeps them until
/// the thread next allocates much, which an idle proxy's control thread rarely does (with
/// ten thousand clusters, about 24 MiB stayed resident).
// The workspace's one `unsafe`: an FFI call that takes no pointers (mimalloc has no safe
// wrapper for it).
#[allow(unsafe_code)]
fn reclaim() {
    #[cfg(feature = "mimalloc")]
    // SAFETY: mi_collect only walks and purges the calling thread's heap and the arenas;
    // it takes no pointers.
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
}
