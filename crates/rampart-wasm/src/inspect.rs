//! What a module asks for and offers: its imports, exports and memories.

use wasmtime::{Engine, ExternType, Module};

use crate::WasmError;

/// One line per import and export, `import module::name kind` / `export name kind`, with
/// memories' page limits (64 KiB pages), as `rampart wasm inspect` prints it.
pub fn describe(engine: &Engine, bytes: &[u8]) -> Result<Vec<String>, WasmError> {
    if crate::command::is_component(bytes) {
        return describe_component(engine, bytes);
    }
    let module = Module::new(engine, bytes).map_err(|e| WasmError::Compile(format!("{e:#}")))?;
    let mut out: Vec<String> = module
        .imports()
        .map(|i| format!("import {}::{} {}", i.module(), i.name(), kind(&i.ty())))
        .collect();
    out.extend(
        module
            .exports()
            .map(|e| format!("export {} {}", e.name(), kind(&e.ty()))),
    );
    Ok(out)
}

fn kind(t: &ExternType) -> String {
    match t {
        ExternType::Func(_) => "func".into(),
        ExternType::Global(_) => "global".into(),
        ExternType::Table(t) => format!("table min={} max={:?}", t.minimum(), t.maximum()),
        ExternType::Memory(m) => format!(
            "memory min={} max={}",
            m.minimum(),
            m.maximum()
                .map_or_else(|| "none".to_owned(), |n| n.to_string())
        ),
        ExternType::Tag(_) => "tag".into(),
    }
}

fn describe_component(engine: &Engine, bytes: &[u8]) -> Result<Vec<String>, WasmError> {
    let c = wasmtime::component::Component::new(engine, bytes)
        .map_err(|e| WasmError::Compile(format!("{e:#}")))?;
    let ty = c.component_type();
    let mut out: Vec<String> = ty
        .imports(engine)
        .map(|(name, _)| format!("import {name} (component)"))
        .collect();
    out.extend(
        ty.exports(engine)
            .map(|(name, _)| format!("export {name} (component)")),
    );
    Ok(out)
}
