//! Envoy's `.proto` files, as the envoy-types crate ships them in its source
//! (`<cargo home>/registry/src/*/envoy-types-<version>/proto`), compiled with protox (pure
//! Rust, no `protoc`) into one descriptor pool, PGV annotations included.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use prost_reflect::DescriptorPool;
use protox::file::{
    ChainFileResolver, File, FileResolver, GoogleFileResolver, IncludeFileResolver,
};

/// The include directories under the crate's `proto` directory.
const INCLUDES: &[&str] = &[
    "data-plane-api",
    "xds",
    "protoc-gen-validate",
    "googleapis",
    "cel-spec/proto",
    "opentelemetry-proto",
    "client_model",
    "ratelimit",
];

/// What Rampart emits or may emit, and everything these import.
const ROOTS: &[&str] = &[
    "envoy/config/listener/v3/listener.proto",
    "envoy/config/route/v3/route.proto",
    "envoy/config/cluster/v3/cluster.proto",
    "envoy/config/endpoint/v3/endpoint.proto",
    "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto",
    "envoy/extensions/filters/http/router/v3/router.proto",
    "envoy/extensions/filters/http/cors/v3/cors.proto",
    "envoy/extensions/filters/http/jwt_authn/v3/config.proto",
    "envoy/extensions/filters/http/local_ratelimit/v3/local_rate_limit.proto",
    "envoy/extensions/filters/http/ext_authz/v3/ext_authz.proto",
    "xds/type/v3/typed_struct.proto",
    "udpa/type/v1/typed_struct.proto",
];

/// The two `TypedStruct` files, which envoy-types does not ship (it has no Rust types for
/// them either). As published by cncf/xds; neither carries validation rules.
const TYPED_STRUCTS: &[(&str, &str)] = &[
    (
        "xds/type/v3/typed_struct.proto",
        "syntax = \"proto3\";\npackage xds.type.v3;\nimport \"google/protobuf/struct.proto\";\n\
         message TypedStruct {\n  string type_url = 1;\n  google.protobuf.Struct value = 2;\n}\n",
    ),
    (
        "udpa/type/v1/typed_struct.proto",
        "syntax = \"proto3\";\npackage udpa.type.v1;\nimport \"google/protobuf/struct.proto\";\n\
         message TypedStruct {\n  string type_url = 1;\n  google.protobuf.Struct value = 2;\n}\n",
    ),
];

/// Serves [`TYPED_STRUCTS`] from memory.
struct Inline;

impl FileResolver for Inline {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        match TYPED_STRUCTS.iter().find(|(n, _)| *n == name) {
            Some((n, source)) => File::from_source(n, source),
            None => Err(protox::Error::file_not_found(name)),
        }
    }
}

/// The pool, compiled once per test binary.
pub(crate) fn envoy_pool() -> DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| compile(&proto_dir())).clone()
}

fn compile(dir: &Path) -> DescriptorPool {
    let mut resolver = ChainFileResolver::new();
    for include in INCLUDES {
        resolver.add(IncludeFileResolver::new(dir.join(include)));
    }
    resolver.add(GoogleFileResolver::new());
    resolver.add(Inline);
    let mut compiler = protox::Compiler::with_file_resolver(resolver);
    compiler.include_imports(true);
    for root in ROOTS {
        if let Err(e) = compiler.open_file(root) {
            panic!("compiling {root} from {}: {e:?}", dir.display());
        }
    }
    compiler.descriptor_pool()
}

/// envoy-types' `proto` directory ([`rampart_test_support::envoy_proto_dir`]).
fn proto_dir() -> PathBuf {
    rampart_test_support::envoy_proto_dir()
}
