//! Loading a BPF object with aya and turning its failures into [`FlowsError`]s that say what
//! went wrong: the object (parse, BTF, CO-RE relocation, map creation) or a program the kernel
//! refused, with the verifier's log.

use std::error::Error as _;

use aya::programs::{Program, ProgramError};
use aya::{Ebpf, EbpfLoader};

use crate::FlowsError;

/// `error: cause: cause ...`: aya's errors keep the detail (which relocation, which map) in
/// their sources.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

/// Parses `object`, applies its CO-RE relocations against the kernel's BTF and creates its
/// maps, with `max_entries` overriding the sizes the object declares and `globals` setting
/// its read-only (`const volatile`) 32-bit globals.
pub(crate) fn open(
    object: &[u8],
    max_entries: &[(&'static str, u32)],
    globals: &[(&'static str, u32)],
) -> Result<Ebpf, FlowsError> {
    let mut loader = EbpfLoader::new();
    for (map, size) in max_entries {
        loader.map_max_entries(map, *size);
    }
    for (name, value) in globals {
        loader.override_global(name, value, true);
    }
    loader.load(object).map_err(|source| FlowsError::Open {
        detail: chain(&source),
        source: Box::new(source),
    })
}

/// [`open`] for an object file.
pub(crate) fn open_file(path: &std::path::Path) -> Result<Ebpf, FlowsError> {
    EbpfLoader::new()
        .load_file(path)
        .map_err(|source| FlowsError::Open {
            detail: chain(&source),
            source: Box::new(source),
        })
}

/// Loads program `name` into the kernel (the verifier runs here).
pub(crate) fn load_program(ebpf: &mut Ebpf, name: &str) -> Result<(), FlowsError> {
    let program = ebpf.program_mut(name).ok_or_else(|| FlowsError::Load {
        program: Some(name.to_owned()),
        source: Box::new(ProgramError::NotLoaded),
        log: "the object has no program of this name".into(),
    })?;
    let loaded = match program {
        Program::TracePoint(p) => p.load(),
        Program::SchedClassifier(p) => p.load(),
        other => {
            return Err(FlowsError::Load {
                program: Some(name.to_owned()),
                source: Box::new(ProgramError::UnexpectedProgramType),
                log: format!(
                    "program type {:?} is not one this crate loads",
                    other.prog_type()
                ),
            });
        }
    };
    loaded.map_err(|e| load_failed(name, e))
}

/// The error for a program the kernel refused: its name and the verifier's log.
fn load_failed(name: &str, e: ProgramError) -> FlowsError {
    let log = match &e {
        ProgramError::LoadError { verifier_log, .. } => verifier_log.to_string(),
        other => other.source().map(ToString::to_string).unwrap_or_default(),
    };
    FlowsError::Load {
        program: Some(name.to_owned()),
        source: Box::new(e),
        log,
    }
}

/// Loads every program of `ebpf` (sorted by name, so errors are reproducible); returns the
/// names.
pub(crate) fn load_all(ebpf: &mut Ebpf) -> Result<Vec<String>, FlowsError> {
    let mut names: Vec<String> = ebpf.programs().map(|(n, _)| n.to_owned()).collect();
    names.sort();
    for name in &names {
        load_program(ebpf, name)?;
    }
    Ok(names)
}
