//! `rampart openapi lint SPEC` and `rampart openapi import SPEC --cluster NAME`: a spec
//! checked, and its operations made routes in the config store, each with the `openapi`
//! filter that validates requests against its operation. Import goes through the same
//! checked, guarded commit as `rampart apply`; importing again replaces the spec's routes,
//! so operations that left the spec lose theirs.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use rampart_openapi::operation::Operation;
use rampart_openapi::spec::Spec;
use rampart_xds::desired::{Kind, Resource};
use serde_json::{Value, json};

use crate::desired::StoreArgs;

#[derive(clap::Subcommand)]
pub(crate) enum OpenApiCommand {
    /// Check a spec (3.1, or 3.0 upgraded): structure, references, operations, schemas.
    Lint { spec: PathBuf },
    /// Make a spec's operations routes to a cluster, each validating its requests.
    Import(Box<ImportArgs>),
    /// Write a Rust crate for the spec: serde types for every schema, with --server an axum
    /// service trait and router, with --client a reqwest client.
    Codegen {
        spec: PathBuf,
        /// The crate's directory (created; files in it are overwritten).
        #[arg(long)]
        out: PathBuf,
        /// The package name (default: from the spec's file name).
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        server: bool,
        #[arg(long)]
        client: bool,
    },
}

#[derive(clap::Args)]
pub(crate) struct ImportArgs {
    spec: PathBuf,
    /// The cluster the operations go to.
    #[arg(long)]
    cluster: String,
    /// The virtual host (by one of its domains) to add the routes to.
    #[arg(long, default_value = "*")]
    host: String,
    /// Served under this prefix (`/api` makes `/users/{id}` `/api/users/{id}`).
    #[arg(long, default_value = "")]
    base_path: String,
    /// The route table to change (default: the first by name).
    #[arg(long)]
    route_table: Option<String>,
    /// `enforce` (400 problem+json) or `report` (log and count only).
    #[arg(long, default_value = "enforce", value_parser = ["enforce", "report"])]
    mode: String,
    /// Responses against the documented ones: `off`, `report` (log and count), or `enforce`
    /// (502 for an undocumented status or content type; a non-conforming body is cut off).
    #[arg(long, default_value = "off", value_parser = ["off", "report", "enforce"])]
    responses: String,
    /// A filter entry (JSON, e.g. `{"authz":{...}}`) added after the validation on every
    /// route, where it sees the operation (an authz policy reads `input.operation`).
    #[arg(long = "with-filter")]
    with_filter: Vec<String>,
    /// `SCHEME=FILTER_JSON`: the filter that enforces a security scheme of the spec (e.g.
    /// `bearer={"jwt":{...}}`), put first on the routes of operations that require that
    /// scheme (operations with several alternatives are left to a policy).
    #[arg(long = "scheme")]
    schemes: Vec<String>,
    /// Show what would change; write nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    store: StoreArgs,
}

/// Filter entries given on the command line, checked as JSON objects of one key.
struct Extra {
    after: Vec<Value>,
    schemes: Vec<(String, Value)>,
}

fn filter_entry(text: &str, what: &str) -> Result<Value> {
    let v: Value = serde_json::from_str(text).with_context(|| format!("{what}: not JSON"))?;
    anyhow::ensure!(
        v.as_object().is_some_and(|o| o.len() == 1),
        "{what}: a filter entry is an object with one key, the filter's name"
    );
    Ok(v)
}

impl Extra {
    fn parse(a: &ImportArgs) -> Result<Self> {
        let after = a
            .with_filter
            .iter()
            .map(|f| filter_entry(f, "--with-filter"))
            .collect::<Result<_>>()?;
        let schemes = a
            .schemes
            .iter()
            .map(|s| {
                let (name, json) = s
                    .split_once('=')
                    .context("--scheme: expected SCHEME=FILTER_JSON")?;
                Ok((name.to_owned(), filter_entry(json, "--scheme")?))
            })
            .collect::<Result<_>>()?;
        Ok(Self { after, schemes })
    }

    /// The filters for `op`: its security scheme's, the validation, then the others.
    fn chain(&self, op: &Operation, validation: Value) -> Vec<Value> {
        let mut out = Vec::new();
        match op.security.as_array().map(Vec::as_slice) {
            Some([one]) => {
                for (scheme, filter) in &self.schemes {
                    if one.get(scheme).is_some() {
                        out.push(filter.clone());
                    }
                }
            }
            Some(several) if several.len() > 1 && !self.schemes.is_empty() => {
                eprintln!(
                    "note: operation {} accepts {} security alternatives; no scheme filter added (a policy can read input.operation.security)",
                    op.id,
                    several.len()
                );
            }
            _ => {}
        }
        out.push(validation);
        out.extend(self.after.iter().cloned());
        out
    }
}

pub(crate) fn run(cmd: OpenApiCommand) -> ExitCode {
    let result = match cmd {
        OpenApiCommand::Lint { spec } => lint(&spec),
        OpenApiCommand::Import(a) => import(&a),
        OpenApiCommand::Codegen {
            spec,
            out,
            name,
            server,
            client,
        } => codegen(&spec, &out, name, server, client),
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::FAILURE
    })
}

/// The spec, or every problem with it printed.
fn load_clean(path: &std::path::Path) -> Result<Option<Spec>> {
    let spec = match Spec::load(path) {
        Ok(s) => s,
        Err(problems) => {
            report(path, &problems);
            return Ok(None);
        }
    };
    let problems = rampart_openapi::lint::lint(&spec);
    if problems.is_empty() {
        Ok(Some(spec))
    } else {
        report(path, &problems);
        Ok(None)
    }
}

/// Each problem with the file and line its pointer reaches (`shop.yaml:12: #/paths/...`).
fn report(path: &std::path::Path, problems: &[rampart_openapi::Problem]) {
    eprintln!("{}: {} problem(s)", path.display(), problems.len());
    let mut at = rampart_openapi::locate::Locator::default();
    for p in problems {
        match at.find(path, &p.pointer) {
            Some((file, line)) => eprintln!("  {}:{line}: {p}", file.display()),
            None => eprintln!("  {p}"),
        }
    }
}

fn lint(path: &std::path::Path) -> Result<ExitCode> {
    let Some(spec) = load_clean(path)? else {
        return Ok(ExitCode::FAILURE);
    };
    let ops =
        rampart_openapi::operation::operations(&spec).map_err(|p| anyhow::anyhow!("{p:?}"))?;
    println!(
        "{}: ok (OpenAPI {}, {} operation(s))",
        path.display(),
        spec.version,
        ops.len()
    );
    Ok(ExitCode::SUCCESS)
}

fn codegen(
    path: &std::path::Path,
    out: &std::path::Path,
    name: Option<String>,
    server: bool,
    client: bool,
) -> Result<ExitCode> {
    let Some(spec) = load_clean(path)? else {
        return Ok(ExitCode::FAILURE);
    };
    let name = name.unwrap_or_else(|| {
        let stem = path
            .file_stem()
            .map_or_else(|| "api".into(), |s| s.to_string_lossy().into_owned());
        format!(
            "{}-api",
            stem.to_ascii_lowercase().replace(['_', ' ', '.'], "-")
        )
    });
    let opts = rampart_openapi::codegen::Options {
        name,
        server,
        client,
    };
    let files =
        rampart_openapi::codegen::generate(&spec, &opts).map_err(|p| anyhow::anyhow!("{p:?}"))?;
    for (rel, text) in &files {
        let target = out.join(rel);
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(&target, text)
            .with_context(|| format!("cannot write {}", target.display()))?;
    }
    println!(
        "{}: {} file(s) of crate {} written",
        out.display(),
        files.len(),
        opts.name
    );
    Ok(ExitCode::SUCCESS)
}

/// The prefix of the routes an import of `spec` owns.
fn owner(spec: &std::path::Path) -> String {
    let stem = spec
        .file_stem()
        .map_or_else(|| "spec".into(), |s| s.to_string_lossy().into_owned());
    format!("openapi/{stem}/")
}

/// Concrete segments before parameters, longer paths first: `/orders/summary` is tried
/// before `/orders/{id}` (OpenAPI's rule), whatever order the spec lists them in.
fn specificity(op: &Operation) -> Vec<(u8, String)> {
    op.path
        .segments()
        .iter()
        .map(|s| match s {
            rampart_config::template::Segment::Literal(l) => (0, l.clone()),
            rampart_config::template::Segment::Mixed(_) => (1, String::new()),
            rampart_config::template::Segment::Param(_) => (2, String::new()),
        })
        .collect()
}

/// One route per operation.
fn routes(
    a: &ImportArgs,
    extra: &Extra,
    (spec_path, digest): (&std::path::Path, &str),
    ops: &mut [Operation],
) -> Vec<Value> {
    ops.sort_by(|x, y| {
        let (sx, sy) = (specificity(x), specificity(y));
        sy.len()
            .cmp(&sx.len())
            .then(sx.cmp(&sy))
            .then(x.id.cmp(&y.id))
    });
    let base = a.base_path.trim_end_matches('/');
    ops.iter()
        .map(|op| {
            // The digest changes the route when the spec does (its paths and operations
            // unchanged): gateways rebuild the filter and compile the new content.
            let mut filter = json!({
                "spec": spec_path,
                "digest": digest,
                "operation": op.id,
                "mode": a.mode,
            });
            if a.responses != "off" {
                filter["responses"] = json!(a.responses);
            }
            if !base.is_empty() {
                filter["base_path"] = json!(base);
            }
            json!({
                "name": format!("{}{}", owner(spec_path), op.id),
                "match": {
                    "path": { "template": format!("{base}{}", op.path.as_str()) },
                    "methods": [op.method.as_str()],
                },
                "forward": { "cluster": a.cluster },
                "filters": extra.chain(op, json!({ "openapi": filter })),
            })
        })
        .collect()
}

/// The route table with this spec's routes replaced by `new` (first in the host).
fn with_routes(table: &Resource, host: &str, prefix: &str, new: Vec<Value>) -> Result<Resource> {
    let mut spec = table.spec.clone();
    let hosts = spec["virtual_hosts"]
        .as_array_mut()
        .context("a route table without virtual_hosts")?;
    for vh in hosts.iter_mut() {
        if let Some(rs) = vh["routes"].as_array_mut() {
            rs.retain(|r| !r["name"].as_str().is_some_and(|n| n.starts_with(prefix)));
        }
    }
    let Some(vh) = hosts.iter_mut().find(|vh| {
        vh["domains"]
            .as_array()
            .is_some_and(|d| d.iter().any(|d| d.as_str() == Some(host)))
    }) else {
        bail!(
            "route table {} has no virtual host serving {host:?} (--host)",
            table.name
        );
    };
    let rs = vh["routes"]
        .as_array_mut()
        .context("a virtual host without routes")?;
    rs.splice(0..0, new);
    Ok(Resource {
        spec,
        ..table.clone()
    })
}

fn import(a: &ImportArgs) -> Result<ExitCode> {
    let Some(spec) = load_clean(&a.spec)? else {
        return Ok(ExitCode::FAILURE);
    };
    let path = std::fs::canonicalize(&a.spec)?;
    let mut ops =
        rampart_openapi::operation::operations(&spec).map_err(|p| anyhow::anyhow!("{p:?}"))?;
    let extra = Extra::parse(a)?;
    let new = routes(a, &extra, (&path, &spec.digest()), &mut ops);
    let count = new.len();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut c = crate::desired::client(&a.store)?;
        let state = crate::desired::load(&mut c).await?;
        let mut tables: Vec<&Resource> = state
            .resources
            .iter()
            .filter(|r| r.kind == Kind::RouteTable)
            .collect();
        tables.sort_by(|x, y| x.name.cmp(&y.name));
        let table = match &a.route_table {
            Some(name) => tables
                .into_iter()
                .find(|t| &t.name == name)
                .with_context(|| format!("no route table {name:?}"))?,
            None => tables
                .into_iter()
                .next()
                .context("the store has no route table (apply one first)")?,
        };
        let changed = with_routes(table, &a.host, &owner(&path), new)?;
        if changed.spec == table.spec {
            println!(
                "RouteTable/{} unchanged ({count} operation route(s))",
                table.name
            );
            return Ok(ExitCode::SUCCESS);
        }
        let merged: Vec<Resource> = state
            .resources
            .iter()
            .map(|r| {
                if r.kind == changed.kind && r.name == changed.name {
                    changed.clone()
                } else {
                    r.clone()
                }
            })
            .collect();
        if let Err(errors) = crate::desired::check(&merged) {
            eprintln!("importing {} would break the config:", a.spec.display());
            for e in errors {
                eprintln!("  {e}");
            }
            return Ok(ExitCode::FAILURE);
        }
        let suffix = if a.dry_run { " (dry run)" } else { "" };
        if !a.dry_run {
            crate::desired::commit(&mut c, &state, &[&changed], &[]).await?;
        }
        println!(
            "RouteTable/{} configured: {count} operation route(s) from {}{suffix}",
            table.name,
            a.spec.display()
        );
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concrete_paths_come_before_templates_and_reimport_replaces() {
        let spec = Spec::from_text(
            "openapi: 3.1.0\ninfo: { title: t, version: '1' }\npaths:\n  /orders/{id}:\n    parameters: [{ name: id, in: path, required: true }]\n    get: { operationId: one, security: [{ key: [] }], responses: {} }\n  /orders/summary:\n    get: { operationId: summary, responses: {} }\n  /orders:\n    get: { operationId: all, responses: {} }\n",
        )
        .unwrap();
        let mut ops = rampart_openapi::operation::operations(&spec).unwrap();
        let a = ImportArgs {
            spec: "shop.yaml".into(),
            cluster: "shop".into(),
            host: "*".into(),
            base_path: "/api/".into(),
            route_table: None,
            mode: "enforce".into(),
            responses: "off".into(),
            with_filter: vec![r#"{"authz":{"tenant":{"fixed":"acme"}}}"#.into()],
            schemes: vec![r#"key={"api_key":{"clients":{"ci":"0123456789abcdef"}}}"#.into()],
            dry_run: false,
            store: StoreArgs {
                endpoints: Vec::new(),
            },
        };
        let extra = Extra::parse(&a).unwrap();
        let rs = routes(
            &a,
            &extra,
            (std::path::Path::new("/x/shop.yaml"), "d1"),
            &mut ops,
        );
        // `one` requires the key scheme alone: its filter first; the policy after validation.
        let chain: Vec<&str> = rs[1]["filters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_object().unwrap().keys().next().unwrap().as_str())
            .collect();
        assert_eq!(chain, ["api_key", "openapi", "authz"]);
        let lens: Vec<usize> = rs
            .iter()
            .map(|r| r["filters"].as_array().unwrap().len())
            .collect();
        assert_eq!(lens, [2, 3, 2]);
        let names: Vec<&str> = rs.iter().map(|r| r["name"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            [
                "openapi/shop/summary",
                "openapi/shop/one",
                "openapi/shop/all"
            ]
        );
        assert_eq!(rs[1]["match"]["path"]["template"], "/api/orders/{id}");
        assert_eq!(rs[1]["filters"][1]["openapi"]["base_path"], "/api");
        let table = Resource {
            kind: Kind::RouteTable,
            name: "main".into(),
            spec: json!({ "name": "main", "virtual_hosts": [{ "name": "all", "domains": ["*"], "routes": [{ "name": "catch", "match": {}, "forward": { "cluster": "x" } }] }] }),
        };
        let once = with_routes(&table, "*", "openapi/shop/", rs.clone()).unwrap();
        let twice = with_routes(&once, "*", "openapi/shop/", rs[..1].to_vec()).unwrap();
        let routes = twice.spec["virtual_hosts"][0]["routes"].as_array().unwrap();
        assert_eq!(
            routes.len(),
            2,
            "a re-import with fewer operations drops the others"
        );
        assert_eq!(routes[1]["name"], "catch");
        assert!(with_routes(&table, "api.example", "openapi/shop/", rs).is_err());
    }
}
