//! How objects are shown: whole, or as `meta.k8s.io/v1` `PartialObjectMetadata` when the client
//! asks for it in `Accept` (kube's `metadata_watcher`, `Api::get_metadata`, `list_metadata`).

use serde_json::{Value, json};

/// The representation a request asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum View {
    Full,
    Metadata,
}

impl View {
    /// From the `Accept` header: `application/json;as=PartialObjectMetadata...` asks for
    /// metadata only (the list form too).
    pub(crate) fn from_accept(accept: &str) -> Self {
        if accept.contains("as=PartialObjectMetadata") {
            View::Metadata
        } else {
            View::Full
        }
    }

    /// An object as this view shows it.
    pub(crate) fn object(self, obj: &Value) -> Value {
        match self {
            View::Full => obj.clone(),
            View::Metadata => json!({
                "apiVersion": "meta.k8s.io/v1",
                "kind": "PartialObjectMetadata",
                "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
            }),
        }
    }

    /// A list of objects (already in this view) at a resource version.
    pub(crate) fn list(
        self,
        api_version: &str,
        kind: Option<&str>,
        rv: u64,
        items: Vec<Value>,
    ) -> Value {
        let (api_version, kind) = match self {
            View::Full => (
                api_version.to_owned(),
                format!("{}List", kind.unwrap_or_default()),
            ),
            View::Metadata => (
                "meta.k8s.io/v1".to_owned(),
                "PartialObjectMetadataList".to_owned(),
            ),
        };
        json!({
            "apiVersion": api_version,
            "kind": kind,
            "metadata": {"resourceVersion": rv.to_string()},
            "items": Value::Array(items),
        })
    }

    /// A BOOKMARK event's object: the type and a resource version (and annotations).
    pub(crate) fn bookmark(
        self,
        api_version: &str,
        kind: Option<&str>,
        rv: u64,
        annotations: Option<Value>,
    ) -> Value {
        let (api_version, kind) = match self {
            View::Full => (api_version, kind.unwrap_or_default()),
            View::Metadata => ("meta.k8s.io/v1", "PartialObjectMetadata"),
        };
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if let Some(annotations) = annotations {
            metadata["annotations"] = annotations;
        }
        json!({"apiVersion": api_version, "kind": kind, "metadata": metadata})
    }
}
