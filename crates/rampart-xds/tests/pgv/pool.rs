//! Envoy's `.proto` files, as the envoy-types crate ships them in its source
//! (`<cargo home>/registry/src/*/envoy-types-<version>/proto`), compiled with protox (pure
//! Rust, no `protoc`) into one descriptor pool, PGV annotations included.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use prost_reflect::DescriptorPool;
use protox::file::{
    ChainFileResolver, File, FileResolver, GoogleFileResolver, IncludeFileResolver,
};

/// Set to a `proto` directory laid out like envoy-types' to use it instead of the crate's.
const OVERRIDE: &str = "ENVOY_PROTO_DIR";

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

/// A file every envoy-types `proto` directory has.
const MARKER: &str = "protoc-gen-validate/validate/validate.proto";

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

/// envoy-types' `proto` directory: [`OVERRIDE`], or the crate's source in a cargo home
/// (`$CARGO_HOME`, then `~/.cargo`), for the version in the workspace's Cargo.lock.
/// Panics with what was tried when there is none: the check must not pass by not running.
pub(crate) fn proto_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(OVERRIDE) {
        let dir = PathBuf::from(dir);
        assert!(
            dir.join(MARKER).is_file(),
            "{OVERRIDE}={}: no {MARKER} there",
            dir.display()
        );
        return dir;
    }
    let wanted = format!("envoy-types-{}", locked_version("envoy-types"));
    let mut tried = Vec::new();
    for home in cargo_homes() {
        let src = home.join("registry").join("src");
        let Ok(registries) = std::fs::read_dir(&src) else {
            tried.push(src);
            continue;
        };
        for registry in registries.flatten() {
            let dir = registry.path().join(&wanted).join("proto");
            if dir.join(MARKER).is_file() {
                return dir;
            }
            tried.push(dir);
        }
    }
    panic!(
        "Envoy's .proto files not found: no {wanted}/proto (with {MARKER}) in {tried:#?}. \
         Build or `cargo fetch` the workspace so that cargo unpacks envoy-types, set \
         CARGO_HOME to where it did, or point {OVERRIDE} at a copy."
    );
}

fn cargo_homes() -> Vec<PathBuf> {
    let mut homes: Vec<PathBuf> = Vec::new();
    if let Some(h) = std::env::var_os("CARGO_HOME") {
        homes.push(h.into());
    }
    if let Some(h) = std::env::var_os("HOME") {
        homes.push(PathBuf::from(h).join(".cargo"));
    }
    homes.dedup();
    homes
}

/// The version of `name` in the Cargo.lock of the workspace this crate is in.
fn locked_version(name: &str) -> String {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let Some(lock) = manifest
        .ancestors()
        .map(|d| d.join("Cargo.lock"))
        .find(|p| p.is_file())
    else {
        panic!("no Cargo.lock above {}", manifest.display());
    };
    let text = std::fs::read_to_string(&lock)
        .unwrap_or_else(|e| panic!("reading {}: {e}", lock.display()));
    let header = format!("name = \"{name}\"");
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim() == header {
            let version = lines
                .next()
                .and_then(|l| l.trim().strip_prefix("version = \""));
            if let Some(v) = version.and_then(|v| v.strip_suffix('"')) {
                return v.to_owned();
            }
        }
    }
    panic!("{} does not lock {name}", lock.display());
}
