use std::path::PathBuf;
use std::time::Duration;

/// Why a guest did not load or did not finish. Each says what to fix or what the guest did.
#[derive(Debug, thiserror::Error)]
pub enum WasmError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the module does not compile: {0}")]
    Compile(String),
    #[error("the module imports {module}::{name}, which its profile ({profile}) does not grant")]
    ForbiddenImport {
        module: String,
        name: String,
        profile: &'static str,
    },
    #[error("signature: {0}")]
    Signature(#[from] crate::signing::SignatureError),
    #[error("the guest ran past its deadline ({0:?})")]
    Deadline(Duration),
    #[error("the guest trapped: {0}")]
    Trap(String),
    #[error("the guest could not be instantiated: {0}")]
    Instantiate(String),
    #[error("the sandbox: {0}")]
    Engine(String),
}

impl WasmError {
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| WasmError::Io { path, source }
    }

    /// A guest's failure as the host saw it: a deadline, a trap (with its reason) or an
    /// error in a host call.
    pub(crate) fn from_run(e: &wasmtime::Error, deadline: Duration) -> Self {
        match e.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::Interrupt) => WasmError::Deadline(deadline),
            Some(t) => WasmError::Trap(t.to_string()),
            None => WasmError::Trap(format!("{e:#}")),
        }
    }
}
