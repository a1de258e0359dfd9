//! `rampart operator crds|manifests`: the operator's CustomResourceDefinitions and install
//! objects as YAML documents, made from the Rust types (`kubectl apply -f -` takes them).

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};

#[derive(clap::Subcommand)]
pub(crate) enum OperatorCommand {
    /// Print every CRD the operator serves, as multi-document YAML.
    Crds,
    /// Print what installs the operator (namespace, service account, least-privilege RBAC,
    /// its Deployment), as multi-document YAML. The Deployment runs `rampart operator run`,
    /// the controller, which this build does not have yet.
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
        OperatorCommand::Crds => print_all(
            rampart_operator::crds::all()
                .iter()
                .map(serde_json::to_value)
                .collect::<Result<_, _>>()
                .context("a CRD as JSON")?,
        ),
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
