//! Builds the BPF objects and their libbpf-rs skeletons.
//!
//! Two objects, each with its own skeleton: `flows` (the tracepoint programs of the flow
//! tracer) and `tc_bytes` (the TC byte counter of `src/tc.rs`). With the `bpf-build` feature
//! (default) and clang + bpftool + kernel BTF present, the C in `src/bpf/<name>.bpf.c` is
//! compiled against a `vmlinux.h` dumped from this machine's kernel BTF (into `OUT_DIR`; it is
//! ~3 MB and kernel-specific, so it is not committed). Otherwise the committed object
//! `src/bpf/<name>.bpf.o` is used, so machines without clang still build. The test
//! `committed_object_matches_source` checks that the two agree (see `src/lib.rs`).

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use libbpf_cargo::SkeletonBuilder;

/// One BPF object: its name (`src/bpf/<name>.bpf.c`, skeleton `<name>.skel.rs`) and the
/// prefix of the environment variables that tell the reproducibility test where the fresh
/// object is (`<PREFIX>_FRESH_OBJ`) and what built it (`<PREFIX>_FRESH_META`).
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
];

const BTF: &str = "/sys/kernel/btf/vmlinux";

/// Extra clang flags (libbpf-cargo adds `-g -O2 -target bpf -D__TARGET_ARCH_x86` and the
/// libbpf headers). `-mcpu=v3`: atomic fetch-and-add for flow ids.
const CLANG_ARGS: &[&str] = &["-mcpu=v3", "-Wall", "-Werror"];

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
        // Absolute path: the skeleton embeds the object with include_bytes!.
        let obj = if obj.is_absolute() {
            obj
        } else {
            manifest_dir().join(obj)
        };
        let skel = out.join(format!("{}.skel.rs", o.name));
        if let Err(e) = SkeletonBuilder::new()
            .obj(&obj)
            .reference_obj(true)
            .generate(&skel)
        {
            panic!(
                "rampart-flows: generating the skeleton from {}: {e:#}",
                obj.display()
            );
        }
    }
}

/// clang and a `vmlinux.h`, ready to compile any of the objects.
struct Toolchain {
    clang: String,
    include: PathBuf,
    out: PathBuf,
    /// One line describing the inputs, written to the `.meta` file next to a blessed object.
    meta: String,
}

impl Toolchain {
    fn prepare(out: &Path) -> Result<Self, String> {
        let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_owned());
        let bpftool = env::var("BPFTOOL").unwrap_or_else(|_| "bpftool".to_owned());
        let clang_version = version_line(&clang)?;
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
            "clang={clang_version}; vmlinux.h fnv1a64={:016x}",
            fnv1a64(&dump.stdout)
        );
        Ok(Self {
            clang,
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
        SkeletonBuilder::new()
            .source(&source)
            .obj(&obj)
            .clang(&self.clang)
            .clang_args(&args)
            .build()
            .map_err(|e| format!("compiling {source}: {e:#}"))?;
        Ok((obj, self.meta.clone()))
    }
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
}

fn version_line(clang: &str) -> Result<String, String> {
    let out = Command::new(clang)
        .arg("--version")
        .output()
        .map_err(|e| format!("`{clang}` not found ({e}); install Debian package clang"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.lines().next().unwrap_or("unknown").trim().to_owned())
}

/// FNV-1a, 64 bit: a stable fingerprint of the vmlinux.h the object was built against.
fn fnv1a64(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
