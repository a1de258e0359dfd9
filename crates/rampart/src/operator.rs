//! `rampart operator crds`: the operator's CustomResourceDefinitions as YAML documents, made
//! from the Rust types (`kubectl apply -f -` takes them).

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};

#[derive(clap::Subcommand)]
pub(crate) enum OperatorCommand {
    /// Print every CRD the operator serves, as multi-document YAML.
    Crds,
}

pub(crate) fn run(cmd: &OperatorCommand) -> Result<ExitCode> {
    match cmd {
        OperatorCommand::Crds => {
            let mut out = std::io::stdout().lock();
            for crd in rampart_operator::crds::all() {
                let yaml = serde_saphyr::to_string(&crd).context("a CRD as YAML")?;
                match writeln!(out, "---\n{}", yaml.trim_end()) {
                    // A reader that stopped early (`| head`) is not an error of ours.
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => break,
                    other => other.context("writing the CRDs")?,
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
