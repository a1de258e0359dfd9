//! Builds the BPF objects the crate embeds.
//!
//! Three objects: `flows` (the tracepoint programs of the flow tracer), `tc_bytes` (the TC
//! byte counter of `src/tc.rs`) and `labels` (maps only: the pinned label maps of
//! `src/label_map.rs`). With the `bpf-build` feature (default) and clang, llvm-strip,
//! bpftool, libbpf's BPF headers (Debian package libbpf-dev) and kernel BTF present, the C in
//! `src/bpf/<name>.bpf.c` is compiled against a `vmlinux.h` dumped from this machine's kernel
//! BTF (into `OUT_DIR`; it is ~3 MB and kernel-specific, so it is not committed) and its DWARF
//! stripped (BTF stays). Otherwise the committed object `src/bpf/<name>.bpf.o` is used, so
//! machines without clang still build. Either way the object is embedded through
//! `<PREFIX>_OBJ`; aya loads it at run time, so no skeleton is generated. The test
//! `committed_object_matches_source` checks that fresh and committed objects agree (see
//! `src/lib.rs`).

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One BPF object: its name (`src/bpf/<name>.bpf.c`) and the prefix of the environment
/// variables that say which object is embedded (`<PREFIX>_OBJ`) and tell the reproducibility
/// test where the fresh object is (`<PREFIX>_FRESH_OBJ`) and what built it
/// (`<PREFIX>_FRESH_META`).
struct Object {
    name: &'static str,
    env: &'static str,
}

const OBJECTS: &[Object] = &[
    Object {
        name: "flows",
        env: "RAMPART_FLOWS",
    },
    Object {
        name: "tc_bytes",
        env: "RAMPART_FLOWS_TC",
    },
    Object {
        name: "labels",
        env: "RAMPART_FLOWS_LABELS",
    },
];

const BTF: &str = "/sys/kernel/btf/vmlinux";

/// clang's flags: BPF target, BTF from `-g` (the DWARF is stripped afterwards), x86 for
/// `bpf_tracing.h`; `-mcpu=v3`: atomic fetch-and-add for flow ids.
const CLANG_ARGS: &[&str] = &[
    "-g",
    "-O2",
    "-target",
    "bpf",
    "-D__TARGET_ARCH_x86",
    "-mcpu=v3",
    "-Wall",
    "-Werror",
];

/// Where libbpf's BPF-side headers (`bpf/bpf_helpers.h`, ...) live: Debian's libbpf-dev.
const BPF_HEADERS: &str = "/usr/include/bpf";

/// The headers the programs include, fingerprinted into the meta line.
const HEADERS: &[&str] = &[
    "bpf_helpers.h",
    "bpf_helper_defs.h",
    "bpf_core_read.h",
    "bpf_endian.h",
];

/// Relative paths: clang records the source path in the object's BTF line info, so a relative
/// one keeps the object independent of where the workspace is checked out.
fn src(name: &str) -> String {
    format!("src/bpf/{name}.bpf.c")
}

fn committed_obj(name: &str) -> String {
    format!("src/bpf/{name}.bpf.o")
}

fn main() {
    for o in OBJECTS {
        println!("cargo:rerun-if-changed={}", src(o.name));
        println!("cargo:rerun-if-changed={}", committed_obj(o.name));
        println!("cargo:rerun-if-changed={}.meta", committed_obj(o.name));
    }
    println!("cargo:rerun-if-changed={BTF}");
    println!("cargo:rerun-if-env-changed=CLANG");
    println!("cargo:rerun-if-env-changed=BPFTOOL");
    println!("cargo:rerun-if-env-changed=LLVM_STRIP");
    println!("cargo:rerun-if-env-changed=BPF_HEADERS");

    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let feature = env::var_os("CARGO_FEATURE_BPF_BUILD").is_some();
    let toolchain = if feature {
        Toolchain::prepare(&out)
    } else {
        Err("feature bpf-build is off".to_owned())
    };

    for o in OBJECTS {
        let built = match &toolchain {
            Ok(t) => t.compile(o.name),
            Err(why) => Err(why.clone()),
        };
        let obj = match built {
            Ok((obj, meta)) => {
                // For the reproducibility test: where the fresh object is and what built it.
                println!("cargo:rustc-env={}_FRESH_OBJ={}", o.env, obj.display());
                println!("cargo:rustc-env={}_FRESH_META={meta}", o.env);
                obj
            }
            Err(why) => {
                if feature {
                    println!(
                        "cargo:warning=rampart-flows: using the committed {}: {why}",
                        committed_obj(o.name)
                    );
                }
                println!("cargo:rustc-env={}_FRESH_OBJ=", o.env);
                println!("cargo:rustc-env={}_FRESH_META=not built: {why}", o.env);
                PathBuf::from(committed_obj(o.name))
            }
        };
        // Absolute path: src/lib.rs embeds the object with include_bytes_aligned!.
        let obj = if obj.is_absolute() {
            obj
        } else {
            manifest_dir().join(obj)
        };
        println!("cargo:rustc-env={}_OBJ={}", o.env, obj.display());
    }
}

/// clang and a `vmlinux.h`, ready to compile any of the objects.
struct Toolchain {
    clang: String,
    strip: String,
    include: PathBuf,
    out: PathBuf,
    /// One line describing the inputs, written to the `.meta` file next to a blessed object.
    meta: String,
}

impl Toolchain {
    fn prepare(out: &Path) -> Result<Self, String> {
        let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_owned());
        let bpftool = env::var("BPFTOOL").unwrap_or_else(|_| "bpftool".to_owned());
        let strip = env::var("LLVM_STRIP").unwrap_or_else(|_| "llvm-strip".to_owned());
        let clang_version = version_line(&clang)?;
        version_line(&strip)?;
        let headers_dir =
            PathBuf::from(env::var("BPF_HEADERS").unwrap_or_else(|_| BPF_HEADERS.to_owned()));
        let mut headers = Vec::new();
        for h in HEADERS {
            let path = headers_dir.join(h);
            println!("cargo:rerun-if-changed={}", path.display());
            headers.extend(fs::read(&path).map_err(|e| {
                format!(
                    "{}: {e}; install Debian package libbpf-dev (or set BPF_HEADERS)",
                    path.display()
                )
            })?);
        }
        if !Path::new(BTF).exists() {
            return Err(format!(
                "{BTF} is missing (kernel without BTF), cannot dump vmlinux.h"
            ));
        }

        let include = out.join("include");
        fs::create_dir_all(&include).map_err(|e| format!("creating {}: {e}", include.display()))?;
        let dump = Command::new(&bpftool)
            .args(["btf", "dump", "file", BTF, "format", "c"])
            .output()
            .map_err(|e| format!("running `{bpftool}` (Debian package bpftool): {e}"))?;
        if !dump.status.success() {
            return Err(format!(
                "`{bpftool} btf dump` failed: {}",
                String::from_utf8_lossy(&dump.stderr).trim()
            ));
        }
        let vmlinux = include.join("vmlinux.h");
        // Rewrite only on change, so clang's output (and cargo's fingerprints) stay put.
        if fs::read(&vmlinux).ok().as_deref() != Some(&dump.stdout[..]) {
            fs::write(&vmlinux, &dump.stdout)
                .map_err(|e| format!("writing {}: {e}", vmlinux.display()))?;
        }
        let meta = format!(
            "clang={clang_version}; vmlinux.h fnv1a64={:016x}; libbpf headers fnv1a64={:016x}",
            fnv1a64(&dump.stdout),
            fnv1a64(&headers)
        );
        Ok(Self {
            clang,
            strip,
            include,
            out: out.to_owned(),
            meta,
        })
    }

    /// Compiles `src/bpf/<name>.bpf.c`; returns the object and a one-line description of its
    /// inputs.
    fn compile(&self, name: &str) -> Result<(PathBuf, String), String> {
        let source = src(name);
        let obj = self.out.join(format!("{name}.bpf.o"));
        let mut args: Vec<String> = CLANG_ARGS.iter().map(|s| (*s).to_owned()).collect();
        // clang records the absolute source path in BTF line info; map the checkout away so
        // the object does not depend on where the workspace lives.
        args.push(format!("-fdebug-prefix-map={}=.", manifest_dir().display()));
        args.push("-I".to_owned());
        args.push(self.include.display().to_string());
        run(Command::new(&self.clang)
            .args(&args)
            .arg("-c")
            .arg(&source)
            .arg("-o")
            .arg(&obj))
        .map_err(|e| format!("compiling {source}: {e}"))?;
        // BTF (which CO-RE and the loader need) stays; DWARF is dead weight in the binary.
        run(Command::new(&self.strip).arg("-g").arg(&obj))
            .map_err(|e| format!("stripping {}: {e}", obj.display()))?;
        Ok((obj, self.meta.clone()))
    }
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
}

/// Runs a tool to completion; its stderr is the error when it fails.
fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn version_line(tool: &str) -> Result<String, String> {
    let out = Command::new(tool)
        .arg("--version")
        .output()
        .map_err(|e| format!("`{tool}` not found ({e}); install Debian package clang"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.lines().next().unwrap_or("unknown").trim().to_owned())
}

/// FNV-1a, 64 bit: a stable fingerprint of the vmlinux.h and headers the object was built
/// against.
fn fnv1a64(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
