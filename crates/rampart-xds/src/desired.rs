//! Desired state as the store keeps it: one key per resource under [`PREFIX`]
//! (`/rampart/v1/clusters/api`), its value the resource's config entry as JSON, the same
//! fields as in a config file. `rampart apply` writes these keys, the control plane reads
//! them back into a config ([`assemble`]).

use rampart_config::RawConfig;
use serde_json::Value;

/// Every resource lives under this prefix; `v1` is the schema version.
pub const PREFIX: &str = "/rampart/v1/";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Listener,
    RouteTable,
    Cluster,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Listener, Kind::RouteTable, Kind::Cluster];

    /// `Cluster`, `clusters`, `route_table`, `routetables`... (as kubectl takes kinds).
    pub fn parse(s: &str) -> Option<Kind> {
        let s = s.to_ascii_lowercase().replace(['_', '-'], "");
        match s.trim_end_matches('s') {
            "listener" => Some(Kind::Listener),
            "routetable" => Some(Kind::RouteTable),
            "cluster" => Some(Kind::Cluster),
            _ => None,
        }
    }

    /// The config file's field for this kind.
    pub fn field(self) -> &'static str {
        match self {
            Kind::Listener => "listeners",
            Kind::RouteTable => "route_tables",
            Kind::Cluster => "clusters",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Listener => "Listener",
            Kind::RouteTable => "RouteTable",
            Kind::Cluster => "Cluster",
        }
    }
}

/// The store key of a resource.
pub fn key(kind: Kind, name: &str) -> String {
    format!("{PREFIX}{}/{name}", kind.field())
}

/// The kind and name a store key holds.
pub fn parse_key(key: &str) -> Option<(Kind, &str)> {
    let rest = key.strip_prefix(PREFIX)?;
    let (field, name) = rest.split_once('/')?;
    let kind = Kind::ALL.into_iter().find(|k| k.field() == field)?;
    (!name.is_empty()).then_some((kind, name))
}

/// One resource: its kind, name, and config entry (name included).
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub kind: Kind,
    pub name: String,
    pub spec: Value,
}

impl Resource {
    /// A resource from a store key and value.
    pub fn from_kv(key: &str, value: &[u8]) -> Result<Resource, String> {
        let (kind, name) = parse_key(key).ok_or_else(|| format!("{key}: not a resource key"))?;
        let spec: Value =
            serde_json::from_slice(value).map_err(|e| format!("{key}: not JSON: {e}"))?;
        Ok(Resource {
            kind,
            name: name.to_owned(),
            spec,
        })
    }

    pub fn key(&self) -> String {
        key(self.kind, &self.name)
    }

    /// `Cluster/api`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.kind.name(), self.name)
    }
}

impl Resource {
    /// A desired-state document: a config entry plus `kind:`.
    pub fn from_document(mut v: Value) -> Result<Resource, String> {
        let obj = v.as_object_mut().ok_or("not a mapping")?;
        let kind = obj
            .remove("kind")
            .and_then(|k| k.as_str().and_then(Kind::parse))
            .ok_or("kind: must be Listener, RouteTable or Cluster")?;
        let name = obj
            .get("name")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or("name: required")?
            .to_owned();
        Ok(Resource {
            kind,
            name,
            spec: v,
        })
    }
}

/// Multi-document YAML (documents separated by `---` lines), each a config entry plus
/// `kind:`. Errors name the document.
pub fn documents(yaml: &str) -> Result<Vec<Resource>, String> {
    let mut out = Vec::new();
    let mut doc = String::new();
    let mut n = 0;
    for line in yaml.lines().chain(std::iter::once("---")) {
        if line.trim_end() != "---" {
            doc.push_str(line);
            doc.push('\n');
            continue;
        }
        if doc.trim().is_empty() {
            doc.clear();
            continue;
        }
        n += 1;
        let v = rampart_config::yaml_value(&doc).map_err(|e| format!("document {n}: {e}"))?;
        out.push(Resource::from_document(v).map_err(|e| format!("document {n}: {e}"))?);
        doc.clear();
    }
    Ok(out)
}

/// The raw config a set of resources makes, in kind then name order.
pub fn assemble(resources: &[Resource]) -> Result<RawConfig, String> {
    let mut sorted: Vec<&Resource> = resources.iter().collect();
    sorted.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
    let mut doc = serde_json::Map::new();
    for k in Kind::ALL {
        let list: Vec<Value> = sorted
            .iter()
            .filter(|r| r.kind == k)
            .map(|r| r.spec.clone())
            .collect();
        doc.insert(k.field().to_owned(), Value::Array(list));
    }
    serde_json::from_value(Value::Object(doc)).map_err(|e| e.to_string())
}

/// A field path of the [`assemble`]d config, told by resource:
/// `clusters[1].endpoints[0]` → `Cluster/c: endpoints[0]`.
pub fn blame(path: &str, resources: &[Resource]) -> String {
    let mut sorted: Vec<&Resource> = resources.iter().collect();
    sorted.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
    for k in Kind::ALL {
        let Some(rest) = path
            .strip_prefix(k.field())
            .and_then(|r| r.strip_prefix('['))
        else {
            continue;
        };
        let Some((index, tail)) = rest.split_once(']') else {
            continue;
        };
        let Ok(i) = index.parse::<usize>() else {
            continue;
        };
        if let Some(r) = sorted.iter().filter(|r| r.kind == k).nth(i) {
            let tail = tail.strip_prefix('.').unwrap_or(tail);
            return format!("{}: {tail}", r.id());
        }
    }
    path.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_kinds() {
        assert_eq!(
            key(Kind::RouteTable, "main"),
            "/rampart/v1/route_tables/main"
        );
        assert_eq!(
            parse_key("/rampart/v1/clusters/api"),
            Some((Kind::Cluster, "api"))
        );
        assert_eq!(parse_key("/rampart/v1/clusters/"), None);
        assert_eq!(parse_key("/other/clusters/api"), None);
        for s in ["Cluster", "clusters", "CLUSTER"] {
            assert_eq!(Kind::parse(s), Some(Kind::Cluster));
        }
        assert_eq!(Kind::parse("route_tables"), Some(Kind::RouteTable));
        assert_eq!(Kind::parse("pods"), None);
    }

    #[test]
    fn documents_name_their_problems() {
        let docs = documents(
            "kind: Cluster\nname: a\nendpoints: [\"127.0.0.1:1\"]\n---\n---\nkind: Listener\nname: l\naddress: \"127.0.0.1:2\"\nroute_table: t\n",
        )
        .unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].id(), "Cluster/a");
        assert!(docs[0].spec.get("kind").is_none());
        let e = documents("kind: Cluster\nname: a\n---\nkind: Pod\nname: p\n").unwrap_err();
        assert!(e.starts_with("document 2: kind"), "{e}");
        let e = documents("kind: Cluster\n").unwrap_err();
        assert!(e.starts_with("document 1: name"), "{e}");
    }

    #[test]
    fn errors_are_told_by_resource() {
        let docs = documents(
            "kind: Cluster\nname: b\nendpoints: []\n---\nkind: Cluster\nname: a\nendpoints: [\"127.0.0.1:1\"]\n",
        )
        .unwrap();
        let raw = assemble(&docs).unwrap();
        let err = rampart_config::validate(raw).unwrap_err();
        let told: Vec<String> = err
            .field_errors()
            .iter()
            .map(|e| format!("{}: {}", blame(&e.path, &docs), e.rule))
            .collect();
        assert_eq!(
            told,
            ["Cluster/b: endpoints: must list at least one endpoint"]
        );
    }
}
