//! Compiled modules kept on disk, so a restart deserializes (≈0.2 ms) instead of compiling
//! (≈100 ms and more). The key is the module's SHA-256 and the engine's compatibility hash:
//! another wasmtime or another engine configuration never reads an entry it did not write.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use ring::digest::{SHA256, digest};
use wasmtime::component::Component;
use wasmtime::{Engine, Module};

use crate::WasmError;

/// A directory of precompiled modules (created 0700; entries written atomically).
#[derive(Debug, Clone)]
pub struct ModuleCache {
    dir: PathBuf,
}

impl ModuleCache {
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self, WasmError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(WasmError::io(&dir))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .map_err(WasmError::io(&dir))?;
        }
        Ok(Self { dir })
    }

    /// `bytes` compiled for `engine`: from the cache when there, else compiled and kept.
    pub fn module(&self, engine: &Engine, bytes: &[u8]) -> Result<Module, WasmError> {
        self.load(
            &self.entry(engine, bytes, "cwasm"),
            // SAFETY: wasmtime runs what a precompiled file says without checking it, so
            // only this cache's own output may be read: the entry is named by the source's
            // hash and this engine's compatibility hash, written by `keep` below into a
            // directory only its owner can write.
            #[allow(unsafe_code)]
            |path| unsafe { Module::deserialize_file(engine, path) },
            || Module::new(engine, bytes),
            Module::serialize,
        )
    }

    /// As [`ModuleCache::module`], for a component.
    pub fn component(&self, engine: &Engine, bytes: &[u8]) -> Result<Component, WasmError> {
        self.load(
            &self.entry(engine, bytes, "cwasm-component"),
            // SAFETY: as in `module`: only this cache's own entries are read.
            #[allow(unsafe_code)]
            |path| unsafe { Component::deserialize_file(engine, path) },
            || Component::new(engine, bytes),
            Component::serialize,
        )
    }

    /// As [`ModuleCache::component`], keyed by the source's SHA-256 (lower-case hex) that
    /// the caller already checked: a hit reads no source at all (a function's cold start
    /// after idle eviction), and `source` is asked for only on a miss.
    pub fn component_keyed(
        &self,
        engine: &Engine,
        sha256_hex: &str,
        source: impl FnOnce() -> Result<Vec<u8>, WasmError>,
    ) -> Result<Component, WasmError> {
        let hex = sha256_hex.len() == 64
            && sha256_hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hex {
            return Err(WasmError::Compile(format!(
                "{sha256_hex:?} is not a lower-case hex SHA-256"
            )));
        }
        let path = self.entry_for(engine, sha256_hex, "cwasm-component");
        if path.is_file() {
            // SAFETY: as in `module`: only this cache's own entries are read.
            #[allow(unsafe_code)]
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "unusable cache entry; compiling again");
                }
            }
        }
        let bytes = source()?;
        self.load(
            &path,
            |_| Err(wasmtime::format_err!("not cached")),
            || Component::new(engine, &bytes),
            Component::serialize,
        )
    }

    /// The entry at `path` if it loads, else `compile`d and kept there.
    fn load<A>(
        &self,
        path: &Path,
        read: impl FnOnce(&Path) -> wasmtime::Result<A>,
        compile: impl FnOnce() -> wasmtime::Result<A>,
        serialize: impl FnOnce(&A) -> wasmtime::Result<Vec<u8>>,
    ) -> Result<A, WasmError> {
        if path.is_file() {
            match read(path) {
                Ok(a) => return Ok(a),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "unusable cache entry; compiling again");
                }
            }
        }
        let compiled = compile().map_err(|e| WasmError::Compile(format!("{e:#}")))?;
        if let Ok(bytes) = serialize(&compiled) {
            keep(path, &bytes);
        }
        Ok(compiled)
    }

    fn entry(&self, engine: &Engine, bytes: &[u8], ext: &str) -> PathBuf {
        let source: String = digest(&SHA256, bytes)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        self.entry_for(engine, &source, ext)
    }

    fn entry_for(&self, engine: &Engine, sha256_hex: &str, ext: &str) -> PathBuf {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        self.dir
            .join(format!("{sha256_hex}-{:016x}.{ext}", h.finish()))
    }
}

/// Writes an entry whole or not at all (temporary file, then rename).
fn keep(path: &Path, compiled: &[u8]) {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let written = std::fs::write(&tmp, compiled).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        tracing::warn!(path = %path.display(), error = %e, "cannot keep a compiled module");
    }
}
