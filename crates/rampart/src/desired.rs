//! `rampart apply -f FILE` / `rampart get KIND [NAME]` / `rampart delete KIND NAME`: the
//! desired state in the config store, kubectl-like. Every change is checked as the whole
//! config it makes (errors told by resource and field) and written in one transaction that
//! fails if another writer changed those keys meanwhile.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use rampart_kv::client::Client;
use rampart_kv::proto::etcdserverpb as pb;
use rampart_xds::desired::{self, Kind, PREFIX, Resource};

#[derive(clap::Args)]
pub(crate) struct StoreArgs {
    /// Store endpoints (host:port), comma-separated.
    #[arg(long, default_value = "127.0.0.1:2379", value_delimiter = ',')]
    pub(crate) endpoints: Vec<String>,
}

#[derive(clap::Args)]
pub(crate) struct ApplyArgs {
    /// Multi-document YAML: each document a config entry with `kind:`.
    #[arg(short = 'f', long = "filename")]
    file: PathBuf,
    /// Check and show what would change; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Show each change as a unified diff of the resource (with --dry-run: `kubectl diff`).
    #[arg(long)]
    diff: bool,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(clap::Args)]
pub(crate) struct GetArgs {
    kind: String,
    name: Option<String>,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(clap::Args)]
pub(crate) struct DeleteArgs {
    kind: String,
    name: String,
    #[command(flatten)]
    store: StoreArgs,
}

/// The store's resources and each key's modification revision.
pub(crate) struct State {
    pub(crate) resources: Vec<Resource>,
    pub(crate) revisions: HashMap<String, i64>,
    /// The store revision read at.
    pub(crate) revision: i64,
}

pub(crate) fn client(store: &StoreArgs) -> Result<Client> {
    Client::new(&store.endpoints, Duration::from_secs(10)).context("store endpoints")
}

/// Every resource under the prefix.
pub(crate) async fn load(c: &mut Client) -> Result<State> {
    let resp = c
        .range(crate::follow::range_prefix(PREFIX))
        .await
        .context("cannot read the store")?;
    let mut state = State {
        resources: Vec::new(),
        revisions: HashMap::new(),
        revision: resp.header.map_or(0, |h| h.revision),
    };
    for kv in resp.kvs {
        let key = String::from_utf8_lossy(&kv.key).into_owned();
        match Resource::from_kv(&key, &kv.value) {
            Ok(r) => {
                state.revisions.insert(key, kv.mod_revision);
                state.resources.push(r);
            }
            Err(e) => tracing::warn!(error = %e, "skipping a key that is not a resource"),
        }
    }
    Ok(state)
}

/// Checks `resources` as one config; every problem told by resource and field.
pub(crate) fn check(resources: &[Resource]) -> Result<rampart_config::Config, Vec<String>> {
    let raw = desired::assemble(resources).map_err(|e| vec![e])?;
    rampart_config::validate_with(raw, &crate::plugins::filters()).map_err(|e| {
        e.field_errors()
            .iter()
            .map(|f| format!("{}: {}", desired::blame(&f.path, resources), f.rule))
            .collect()
    })
}

fn kind(s: &str) -> Result<Kind> {
    Kind::parse(s)
        .with_context(|| format!("unknown kind {s:?}; expected Listener, RouteTable or Cluster"))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Writes `puts` and `deletes` if none of their keys changed since `state` was read;
/// returns the store revision written.
pub(crate) async fn commit(
    c: &mut Client,
    state: &State,
    puts: &[&Resource],
    deletes: &[String],
) -> Result<i64> {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    let keys = puts.iter().map(|r| r.key()).chain(deletes.iter().cloned());
    let compare = keys
        .map(|k| pb::Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Mod as i32,
            target_union: Some(TargetUnion::ModRevision(
                state.revisions.get(&k).copied().unwrap_or(0),
            )),
            key: k.into_bytes(),
            ..Default::default()
        })
        .collect();
    let mut ops: Vec<pb::RequestOp> = puts
        .iter()
        .map(|r| pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                key: r.key().into_bytes(),
                value: r.spec.to_string().into_bytes(),
                ..Default::default()
            })),
        })
        .collect();
    ops.extend(deletes.iter().map(|k| pb::RequestOp {
        request: Some(pb::request_op::Request::RequestDeleteRange(
            pb::DeleteRangeRequest {
                key: k.clone().into_bytes(),
                ..Default::default()
            },
        )),
    }));
    let resp = c
        .txn(pb::TxnRequest {
            compare,
            success: ops,
            failure: Vec::new(),
        })
        .await
        .context("cannot write to the store")?;
    anyhow::ensure!(
        resp.succeeded,
        "the store changed while this was being applied; run it again"
    );
    Ok(resp.header.map_or(0, |h| h.revision))
}

pub(crate) fn apply(a: &ApplyArgs) -> Result<ExitCode> {
    let text = std::fs::read_to_string(&a.file)
        .with_context(|| format!("cannot read {}", a.file.display()))?;
    let docs =
        desired::documents(&text).map_err(|e| anyhow::anyhow!("{}: {e}", a.file.display()))?;
    runtime()?.block_on(async {
        let mut c = client(&a.store)?;
        let state = load(&mut c).await?;
        let mut merged: Vec<Resource> = state
            .resources
            .iter()
            .filter(|r| !docs.iter().any(|d| d.kind == r.kind && d.name == r.name))
            .cloned()
            .collect();
        merged.extend(docs.iter().cloned());
        if let Err(errors) = check(&merged) {
            eprintln!("{}: {} error(s)", a.file.display(), errors.len());
            for e in errors {
                eprintln!("  {e}");
            }
            return Ok(ExitCode::FAILURE);
        }
        let mut changed = Vec::new();
        for d in &docs {
            let before = state
                .resources
                .iter()
                .find(|r| r.kind == d.kind && r.name == d.name);
            let what = match before {
                None => "created",
                Some(b) if b.spec == d.spec => "unchanged",
                Some(_) => "configured",
            };
            if what != "unchanged" {
                changed.push(d);
            }
            let suffix = if a.dry_run { " (dry run)" } else { "" };
            println!("{} {what}{suffix}", d.id());
            if a.diff && what != "unchanged" {
                print!("{}", diff(before, d));
            }
        }
        if !a.dry_run && !changed.is_empty() {
            commit(&mut c, &state, &changed, &[]).await?;
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `before` → `after` as a unified diff of their pretty JSON (`/dev/null` when new).
fn diff(before: Option<&Resource>, after: &Resource) -> String {
    let pretty = |r: &Resource| serde_json::to_string_pretty(&r.spec).unwrap_or_default() + "\n";
    let old = before.map(pretty).unwrap_or_default();
    let new = pretty(after);
    let from = if before.is_some() {
        format!("a/{}", after.id())
    } else {
        "/dev/null".to_owned()
    };
    similar::TextDiff::from_lines(&old, &new)
        .unified_diff()
        .context_radius(3)
        .header(&from, &format!("b/{}", after.id()))
        .to_string()
}

pub(crate) fn get(a: &GetArgs) -> Result<ExitCode> {
    let kind = kind(&a.kind)?;
    runtime()?.block_on(async {
        let state = load(&mut client(&a.store)?).await?;
        let mut found = false;
        for r in state.resources.iter().filter(|r| r.kind == kind) {
            if a.name.as_deref().is_some_and(|n| n != r.name) {
                continue;
            }
            found = true;
            let mut doc = serde_json::json!({ "kind": kind.name() });
            if let (Some(d), Some(spec)) = (doc.as_object_mut(), r.spec.as_object()) {
                d.extend(spec.clone());
            }
            println!("---\n{}", serde_json::to_string_pretty(&doc)?);
        }
        if let (false, Some(name)) = (found, &a.name) {
            eprintln!("{}/{name} not found", kind.name());
            return Ok(ExitCode::FAILURE);
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub(crate) fn delete(a: &DeleteArgs) -> Result<ExitCode> {
    let kind = kind(&a.kind)?;
    runtime()?.block_on(async {
        let mut c = client(&a.store)?;
        let state = load(&mut c).await?;
        let key = desired::key(kind, &a.name);
        if !state.revisions.contains_key(&key) {
            eprintln!("{}/{} not found", kind.name(), a.name);
            return Ok(ExitCode::FAILURE);
        }
        let rest: Vec<Resource> = state
            .resources
            .iter()
            .filter(|r| r.key() != key)
            .cloned()
            .collect();
        if let Err(errors) = check(&rest) {
            eprintln!(
                "deleting {}/{} would break the config:",
                kind.name(),
                a.name
            );
            for e in errors {
                eprintln!("  {e}");
            }
            return Ok(ExitCode::FAILURE);
        }
        commit(&mut c, &state, &[], &[key]).await?;
        println!("{}/{} deleted", kind.name(), a.name);
        Ok(ExitCode::SUCCESS)
    })
}
