//! `rampart policy`: evaluate Rego and run policy tests the way `opa eval` and `opa test` do;
//! and bundles kept in the config store for every gateway following it (`store`).

pub(crate) mod store;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use rampart_policy::{Bundle, BundleError, Compiled, Value};

#[derive(Args)]
pub(crate) struct PolicyArgs {
    #[command(subcommand)]
    command: PolicyCommand,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Evaluate a Rego query and print the results as JSON (as `opa eval` does)
    Eval {
        /// Policy or data files, or bundle directories (repeatable)
        #[arg(short = 'd', long = "data", required = true)]
        data: Vec<PathBuf>,
        /// The input document (JSON file)
        #[arg(short = 'i', long = "input")]
        input: Option<PathBuf>,
        /// Longest evaluation
        #[arg(long, default_value = "10s", value_parser = crate::cli_args::duration)]
        timeout: Duration,
        /// The query, e.g. `data.authz.decision`
        query: String,
    },
    /// Run every `test_*` rule (as `opa test` does); exits 2 when a test fails
    Test {
        /// A bundle directory, or a directory of bundle directories (one per tenant)
        dir: PathBuf,
        /// Print every test, not only failures
        #[arg(short, long)]
        verbose: bool,
        /// Longest evaluation of one test
        #[arg(long, default_value = "10s", value_parser = crate::cli_args::duration)]
        timeout: Duration,
    },
    /// Upload a bundle directory to a running gateway (`PUT /policy/tenants/TENANT` on its
    /// admin port, with the admin token); the gateway compiles and tests it before the swap
    Push {
        tenant: String,
        dir: PathBuf,
        /// The gateway's admin address
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: std::net::SocketAddr,
        /// Where the admin token is (RAMPART_ADMIN_TOKEN overrides)
        #[arg(long, default_value = crate::admin_token::DEFAULT_TOKEN_FILE)]
        token_file: PathBuf,
    },
}

pub(crate) fn run(args: PolicyArgs) -> ExitCode {
    let result = match args.command {
        PolicyCommand::Eval {
            data,
            input,
            timeout,
            query,
        } => eval(&data, input.as_ref(), timeout, &query),
        PolicyCommand::Test {
            dir,
            verbose,
            timeout,
        } => test(&dir, verbose, timeout),
        PolicyCommand::Push {
            tenant,
            dir,
            admin,
            token_file,
        } => push(&tenant, &dir, admin, &token_file),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn push(
    tenant: &str,
    dir: &std::path::Path,
    admin: std::net::SocketAddr,
    token_file: &std::path::Path,
) -> Result<ExitCode> {
    let bundle = Bundle::load_dir(dir)?;
    let token = crate::admin_token::for_client(token_file)?;
    let modules: serde_json::Map<String, serde_json::Value> = bundle
        .modules
        .into_iter()
        .map(|(name, text)| (name, serde_json::Value::String(text)))
        .collect();
    let body = serde_json::json!({
        "modules": modules,
        "data": bundle.data,
        "entrypoint": bundle.entrypoint,
        "revision": bundle.revision,
    });
    let (status, answer) = crate::admin_client::send(
        admin,
        http::Method::PUT,
        &format!("/policy/tenants/{tenant}"),
        Some(&token),
        body.to_string().into_bytes(),
    )?;
    print!("{answer}");
    if status.is_success() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("error: the admin API answered {status}");
        Ok(ExitCode::FAILURE)
    }
}

fn eval(
    data: &[PathBuf],
    input: Option<&PathBuf>,
    timeout: Duration,
    query: &str,
) -> Result<ExitCode> {
    let bundle = Bundle::load_paths(data)?;
    let compiled = Compiled::load(&bundle, timeout)?;
    let mut engine = compiled.engine();
    if let Some(path) = input {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let value = Value::from_json_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: bad JSON: {e}", path.display()))?;
        engine.set_input(value);
    }
    let results = engine
        .eval_query(query.to_string(), false)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("{}", serde_json::to_string_pretty(&results)?);
    Ok(ExitCode::SUCCESS)
}

/// The bundles under `dir`: itself when it holds Rego files, else each subdirectory.
fn bundles(dir: &PathBuf) -> Result<Vec<(String, Bundle)>> {
    let has_rego = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(Result::ok)
        .any(|e| e.path().extension().is_some_and(|x| x == "rego"));
    if has_rego {
        return Ok(vec![(dir.display().to_string(), Bundle::load_dir(dir)?)]);
    }
    let mut subdirs: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    subdirs.sort();
    let mut out = Vec::new();
    for d in subdirs {
        match Bundle::load_dir(&d) {
            Ok(b) => out.push((d.display().to_string(), b)),
            Err(BundleError::Read { message, .. }) if message == "no .rego files" => {}
            Err(e) => return Err(e.into()),
        }
    }
    if out.is_empty() {
        bail!("{}: no .rego files", dir.display());
    }
    Ok(out)
}

fn test(dir: &PathBuf, verbose: bool, timeout: Duration) -> Result<ExitCode> {
    let (mut passed, mut failed) = (0usize, 0usize);
    for (name, bundle) in bundles(dir)? {
        let compiled = Compiled::load(&bundle, timeout)?;
        let report = compiled.run_tests(&bundle);
        if verbose || report.failed() > 0 {
            println!("{name}:");
        }
        for (test, ok, err) in &report.results {
            match (ok, err) {
                (true, _) if verbose => println!("{test}: PASS"),
                (true, _) => {}
                (false, Some(e)) => println!("{test}: FAIL ({e})"),
                (false, None) => println!("{test}: FAIL"),
            }
        }
        passed += report.passed();
        failed += report.failed();
    }
    let total = passed + failed;
    if total == 0 {
        bail!("{}: no test_ rules found", dir.display());
    }
    println!("{}", "-".repeat(80));
    println!("PASS: {passed}/{total}");
    if failed > 0 {
        println!("FAIL: {failed}/{total}");
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}
