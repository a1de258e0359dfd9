//! `rampart operator crds|manifests|translate|run`: the operator's CustomResourceDefinitions
//! and install objects as YAML documents, made from the Rust types (`kubectl apply -f -` takes
//! them), the Gateway API translation on its own, and the controller.

mod platform;
mod policies;
mod run;

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};

#[derive(clap::Subcommand)]
pub(crate) enum OperatorCommand {
    /// Run the controller: Gateways and HTTPRoutes from the Kubernetes API written to the
    /// store, each generation rolled out and reverted when the proxies refuse it or its
    /// routes fail; one leader among the replicas (a Lease).
    Run(Box<run::RunArgs>),
    /// Print every CRD the operator serves, as multi-document YAML.
    Crds,
    /// Translate Gateway API objects (Gateway, HTTPRoute; multi-document YAML, as `kubectl
    /// get -o yaml` writes them) into desired-state documents for `rampart apply -f`, as the
    /// controller does. Problems (unsupported filters, bad paths) go to stderr.
    Translate {
        #[arg(long, short = 'f')]
        filename: std::path::PathBuf,
        #[command(flatten)]
        backends: BackendArgs,
    },
    /// Print what a RampartCluster (YAML, as `kubectl get -o yaml` writes it) runs: its peer
    /// TLS Secret (new certificates each time), the store's StatefulSet and Services, the
    /// control plane, the proxies, PodDisruptionBudgets; as the controller applies them.
    Workloads {
        #[arg(long, short = 'f')]
        filename: std::path::PathBuf,
    },
    /// Print what installs the operator (namespace, service account, least-privilege RBAC,
    /// its Deployment running `rampart operator run`), as multi-document YAML.
    Manifests {
        #[arg(long, default_value = "rampart-system")]
        namespace: String,
        #[arg(long, default_value = "rampart:latest")]
        image: String,
        #[arg(long, default_value_t = 2)]
        replicas: u32,
    },
}

pub(crate) fn run(cmd: &OperatorCommand) -> Result<ExitCode> {
    match cmd {
        OperatorCommand::Run(args) => run::run(args),
        OperatorCommand::Crds => print_all(
            rampart_operator::crds::all()
                .iter()
                .map(serde_json::to_value)
                .collect::<Result<_, _>>()
                .context("a CRD as JSON")?,
        ),
        OperatorCommand::Translate { filename, backends } => translate(filename, backends),
        OperatorCommand::Workloads { filename } => workloads(filename),
        OperatorCommand::Manifests {
            namespace,
            image,
            replicas,
        } => print_all(rampart_operator::manifests::all(
            &rampart_operator::manifests::Install {
                namespace: namespace.clone(),
                image: image.clone(),
                replicas: *replicas,
            },
        )),
    }
}

fn translate(file: &std::path::Path, backends: &BackendArgs) -> Result<ExitCode> {
    use rampart_operator::gateway::{Gateway, HTTPRoute};
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let (mut gateways, mut routes) = (Vec::new(), Vec::new());
    for (i, doc) in text.split("\n---").enumerate() {
        let doc = doc.trim_start_matches("---").trim();
        if doc.is_empty() {
            continue;
        }
        let v: serde_json::Value = rampart_config::yaml_value(doc)
            .map_err(|e| anyhow::anyhow!("{}: document {i}: {e}", file.display()))?;
        let at = || format!("{}: document {i} ({})", file.display(), v["kind"]);
        match v["kind"].as_str() {
            Some("Gateway") => {
                gateways.push(serde_json::from_value::<Gateway>(v.clone()).with_context(at)?);
            }
            Some("HTTPRoute") => {
                routes.push(serde_json::from_value::<HTTPRoute>(v.clone()).with_context(at)?);
            }
            _ => eprintln!("{}: skipped (not a Gateway or an HTTPRoute)", at()),
        }
    }
    let out = rampart_operator::translate::translate(&gateways, &routes, &backends.resolve()?);
    for (route, problem) in &out.problems {
        eprintln!("HTTPRoute {route}: {problem}");
    }
    print_all(out.documents())
}

fn workloads(file: &std::path::Path) -> Result<ExitCode> {
    use rampart_operator::crds::RampartCluster;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let v = rampart_config::yaml_value(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let cluster: RampartCluster = serde_json::from_value(v)
        .with_context(|| format!("{}: not a RampartCluster", file.display()))?;
    let pki = rampart_operator::workloads::pki(&cluster).context("peer certificates")?;
    let mut objects = vec![rampart_operator::workloads::peer_secret(&cluster, &pki)];
    objects.extend(rampart_operator::workloads::objects(&cluster));
    print_all(objects)
}

/// Where Services are and where listeners bind (`translate` and `run`).
#[derive(clap::Args)]
pub(crate) struct BackendArgs {
    /// The cluster's DNS domain for Service names.
    #[arg(long, default_value = "cluster.local")]
    domain: String,
    /// `NAMESPACE/NAME:PORT=HOST:PORT`: reach a Service at this address instead (outside a
    /// cluster).
    #[arg(long = "backend")]
    backends: Vec<String>,
    /// The address the Gateways' listeners bind on the proxies.
    #[arg(long, default_value = "0.0.0.0")]
    listen_host: String,
}

impl BackendArgs {
    fn resolve(&self) -> Result<rampart_operator::translate::Backends> {
        let mut addresses = std::collections::BTreeMap::new();
        for b in &self.backends {
            let (service, addr) = b
                .split_once('=')
                .with_context(|| format!("--backend {b:?}: NAMESPACE/NAME:PORT=HOST:PORT"))?;
            addresses.insert(service.to_owned(), addr.to_owned());
        }
        Ok(rampart_operator::translate::Backends {
            domain: self.domain.clone(),
            addresses,
            listen_host: self.listen_host.clone(),
        })
    }
}

/// Objects as YAML documents on stdout.
fn print_all(objects: Vec<serde_json::Value>) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    for o in objects {
        let yaml = serde_saphyr::to_string(&o).context("an object as YAML")?;
        match writeln!(out, "---\n{}", yaml.trim_end()) {
            // A reader that stopped early (`| head`) is not an error of ours.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => break,
            other => other.context("writing the objects")?,
        }
    }
    Ok(ExitCode::SUCCESS)
}
