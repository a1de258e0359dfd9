//! Why a decision could not be made (shared by the engine and the decision log).

use crate::bundle::BundleError;

#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    #[error("unknown tenant {0:?}")]
    UnknownTenant(String),
    #[error("tenant {tenant:?}: {source}")]
    Compile {
        tenant: String,
        #[source]
        source: BundleError,
    },
    #[error("tenant {tenant:?}: evaluation failed: {message}")]
    Eval { tenant: String, message: String },
    #[error("tenant {tenant:?}: bad decision: {message}")]
    BadDecision { tenant: String, message: String },
}
