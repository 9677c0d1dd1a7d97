//! Ahead-of-time compilation (`lcjit aot`): the forward program of a model, compiled for
//! one batch size, written as a relocatable object together with a generated C-ABI
//! driver (`driver.rs`) and a C header (`header.rs`), so that C, C++, Rust or Go programs
//! predict with no lcjit at run time. `.a` wraps the object in an `ar` archive with a
//! symbol index (System V/GNU format, `archive.rs`); `.so` links it with the system
//! `cc -shared` ([`Error::Tool`] without one). `seam.rs` builds any loop-IR module the
//! same way with a minimal entry over a caller-given buffer table and loads it: the
//! executor of [`crate::backend::Backend::Aot`], through which tests compare this path
//! with the JIT on every program the runtime builds.
//!
//! Invariants:
//! - the kernels are the JIT's (`codegen::define_kernels` on the same verified module);
//!   for `--target host` the ISA flags and FMA decision are the JIT's, so predictions
//!   equal `CompiledModel` with `Engine::Jit` bit for bit;
//! - only `NAME_*` symbols are global: kernels and data are `Linkage::Local`; libc
//!   functions (`calloc`, `malloc`, `free`, `memcpy`, `memset`, `memcmp`, `fopen`,
//!   `fread`, `fclose`, `strncat`) are imports;
//! - the model has exactly one input and one output (the C API takes one `x` and one `y`);
//! - with [`AotOptions::gradients`] the object also holds the inference-mode gradient
//!   program (`lower::grad::lower_gradients` for the compiled batch: phase 1 and phase 2
//!   over its own buffer table, kernels the JIT's as above) behind `NAME_gradients`,
//!   whose results equal `CompiledModel::gradients` on the JIT bit for bit on the host;
//! - every file is written atomically (a temporary name in the same directory, then
//!   `rename`).

mod archive;
mod driver;
mod header;
#[cfg(unix)]
pub(crate) mod seam;
mod target;
pub mod weights;

use std::path::{Path, PathBuf};

use cranelift_module::{default_libcall_names, Linkage};
use cranelift_object::{ObjectBuilder, ObjectModule};

use super::codegen::define_kernels;
use super::isa::{CodegenOptions, OptLevel};
use crate::error::{Error, Result};
use crate::loop_ir::{verify::verify, BufRole};
use crate::model::Model;

pub use header::MAX_RANK;

/// Where the library's weights live.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum WeightsMode {
    /// In the object's read-only data (`NAME_create(NULL, …)` uses them).
    #[default]
    Embedded,
    /// In a separate weights file ([`weights`] format) passed to `NAME_create`.
    File,
}

/// Options of [`compile_object`].
#[derive(Clone, Debug)]
pub struct AotOptions {
    /// Symbol prefix: a C identifier (`NAME_create`, …).
    pub name: String,
    /// The compiled batch (≥ 1); `NAME_predict` takes any batch in chunks of it.
    pub batch: usize,
    /// `host`, `x86_64[-v2|-v3|-v4]` or a target triple (e.g.
    /// `aarch64-unknown-linux-gnu`).
    pub target: String,
    /// Embedded weights or a weights file.
    pub weights: WeightsMode,
    /// Cranelift optimisation level (the JIT's default unless changed).
    pub opt_level: OptLevel,
    /// A label for the header's comment (usually the model file).
    pub model_label: String,
    /// Also compile the inference-mode gradient program and export `NAME_gradients`.
    pub gradients: bool,
    /// The SIMD tier past f32x4 of the schedules, for the *target*: `Auto` takes the
    /// widest its ISA has (none for a target without AVX2 and FMA), `Only(t)` is refused
    /// for a target without `t`. Every choice computes the same bits.
    pub wide: crate::WideTier,
}

impl Default for AotOptions {
    fn default() -> Self {
        AotOptions {
            name: "model".into(),
            batch: 1,
            target: "host".into(),
            weights: WeightsMode::Embedded,
            opt_level: OptLevel::default(),
            model_label: "a model".into(),
            gradients: false,
            wide: crate::WideTier::Auto,
        }
    }
}

/// The result of [`compile_object`].
#[derive(Clone, Debug)]
pub struct AotArtifact {
    /// The relocatable object file.
    pub object: Vec<u8>,
    /// The C header.
    pub header: String,
    /// The weights file ([`WeightsMode::File`] only).
    pub weights_file: Option<Vec<u8>>,
    /// The symbol prefix.
    pub name: String,
    /// The target triple of the object.
    pub triple: String,
    /// The names of the global symbols the object defines.
    pub exports: Vec<String>,
}

fn usage(detail: impl Into<String>) -> Error {
    Error::Usage {
        detail: detail.into(),
    }
}

/// Whether `name` is a C identifier usable as a symbol prefix.
fn valid_name(name: &str) -> bool {
    let mut c = name.chars();
    matches!(c.next(), Some(ch) if ch == '_' || ch.is_ascii_alphabetic())
        && c.all(|ch| ch == '_' || ch.is_ascii_alphanumeric())
}

/// The functions every library exports, without the `NAME_` prefix.
pub const EXPORTS: [&str; 12] = [
    "create",
    "predict",
    "destroy",
    "input_len",
    "output_len",
    "batch",
    "input_shape",
    "output_shape",
    "last_error",
    "param_count",
    "param_len",
    "param_name",
];

/// The functions a library built with [`AotOptions::gradients`] exports in addition to
/// [`EXPORTS`], without the `NAME_` prefix.
pub const GRADIENT_EXPORTS: [&str; 1] = ["gradients"];

/// Classifies the buffers of `module` into the driver's binding of its buffer table
/// ([`driver::Table`]); `what` names the program in errors. `Input(0)` is bound per
/// call; any other read-only role is an error.
fn classify_buffers<'a>(
    module: &'a crate::loop_ir::Module,
    lens: &[usize],
    offsets: &[usize],
    what: &str,
) -> Result<driver::Table<'a>> {
    let mut out = driver::Table {
        nbuf: module.buffers.len(),
        writable: Vec::new(),
        params: Vec::new(),
        consts: Vec::new(),
        cotangent: None,
    };
    for (i, b) in module.buffers.iter().enumerate() {
        match &b.role {
            BufRole::Input(0) => {}
            BufRole::Param(k) => {
                if lens.get(*k) != Some(&b.len) {
                    return Err(Error::internal(format!(
                        "aot: parameter buffer {} has {} floats, parameter {k} has {:?}",
                        b.name,
                        b.len,
                        lens.get(*k)
                    )));
                }
                out.params.push((i, offsets[*k]));
            }
            BufRole::Const(v) => out.consts.push((i, v.as_slice())),
            BufRole::Cotangent(0) if out.cotangent.is_none() => out.cotangent = Some(i),
            r if !r.is_read_only() => out.writable.push((i, b.len)),
            r => {
                return Err(Error::internal(format!(
                    "aot: {what} has an unexpected read-only buffer {} ({r:?})",
                    b.name
                )))
            }
        }
    }
    Ok(out)
}

/// Checks `opts` and that `model` has one input and one output of rank at most
/// [`MAX_RANK`]; returns their per-sample shapes.
fn check_request(model: &Model, opts: &AotOptions) -> Result<(Vec<usize>, Vec<usize>)> {
    if !valid_name(&opts.name) {
        return Err(usage(format!(
            "--name '{}': not a C identifier (letters, digits and _, not starting with a digit)",
            opts.name
        )));
    }
    if opts.batch == 0 {
        return Err(usage("--batch must be at least 1"));
    }
    let graph = model.graph();
    if graph.inputs.len() != 1 || graph.outputs.len() != 1 {
        return Err(usage(format!(
            "aot needs a model with one input and one output (this one has {} and {})",
            graph.inputs.len(),
            graph.outputs.len()
        )));
    }
    let in_shape = graph.nodes[graph.inputs[0]].shape.clone();
    let out_shape = graph.nodes[graph.outputs[0]].shape.clone();
    if in_shape.len() > MAX_RANK || out_shape.len() > MAX_RANK {
        return Err(usage(format!(
            "aot supports per-sample ranks up to {MAX_RANK}"
        )));
    }
    Ok((in_shape, out_shape))
}

/// The binding of the gradient program `g`'s buffer table and its input, cotangent and
/// input-gradient buffers, checked against the model: `x_len` and `y_len` floats for a
/// batch of inputs and outputs, `lens` for the parameters.
fn grad_table<'a>(
    g: &'a crate::lower::grad::LoweredGrad,
    lens: &[usize],
    offsets: &[usize],
    x_len: usize,
    y_len: usize,
) -> Result<(driver::Table<'a>, usize, usize, usize)> {
    let bind = classify_buffers(&g.forward, lens, offsets, "the gradient program")?;
    let glen = |b: usize| g.forward.buffers.get(b).map_or(usize::MAX, |x| x.len);
    let one = |v: &[u32]| (v.len() == 1).then(|| v[0] as usize);
    // Inference-mode gradient programs give every input a gradient buffer.
    let dx = match g.dinput_bufs.as_slice() {
        [Some(b)] => Some(*b as usize),
        _ => None,
    };
    let (Some(gin), Some(cot), Some(dx)) = (one(&g.input_bufs), bind.cotangent, dx) else {
        return Err(Error::internal(
            "aot: the gradient program lacks its input, cotangent or input gradient",
        ));
    };
    if glen(gin) != x_len
        || glen(cot) != y_len
        || glen(dx) != x_len
        || g.dparam_bufs.len() != lens.len()
        || g.dparam_bufs
            .iter()
            .zip(lens)
            .any(|(&b, &l)| glen(b as usize) != l)
        || g.backward.buffers.len() != g.forward.buffers.len()
    {
        return Err(Error::internal(
            "aot: gradient buffer lengths differ from the model's",
        ));
    }
    Ok((bind, gin, cot, dx))
}

/// The tier the schedules may use for `target` (see [`AotOptions::wide`]): its
/// microkernels need the tier's instructions and fused multiply-adds.
fn target_tier(
    target: &target::Target,
    opts: &AotOptions,
) -> Result<Option<crate::loop_ir::micro::Tier>> {
    let has = |t| target.use_fma && super::wide_call::isa_has(&*target.isa, t);
    opts.wide.choose(has).map_err(|t| Error::Usage {
        detail: format!(
            "--wide {t}: target '{}' lacks it (or fused multiply-adds); choose a target \
             that has it (x86_64-v4 for avx512, x86_64-v3 for avx2) or --wide off",
            opts.target
        ),
    })
}

/// Compiles `model`'s forward program for `opts.batch` rows into an object with the C
/// driver, plus its header (and weights file).
pub fn compile_object(model: &Model, opts: &AotOptions) -> Result<AotArtifact> {
    let (in_shape, out_shape) = check_request(model, opts)?;
    let graph = model.graph();
    let target = target::target_isa(
        &opts.target,
        &CodegenOptions {
            opt_level: opts.opt_level,
            use_fma: None,
            keep_text: false,
            f32x4_only: false,
        },
    )?;
    let tier = target_tier(&target, opts)?;
    let lowered = crate::lower::lower_forward_for(
        graph,
        opts.batch,
        crate::lower::Target {
            tier,
            weights: crate::loop_ir::Dtype::F32,
            plans: None,
            unfused: false,
        },
    )?;
    let module = &lowered.module;
    verify(module)?;
    let in_len: usize = in_shape.iter().product();
    let out_len: usize = out_shape.iter().product();
    let input_buf = lowered.input_bufs[0] as usize;
    let output_buf = lowered.output_bufs[0] as usize;
    let blen = |b: usize| module.buffers.get(b).map_or(usize::MAX, |x| x.len);
    if blen(input_buf) != opts.batch * in_len || blen(output_buf) != opts.batch * out_len {
        return Err(Error::internal(
            "aot: input/output buffer lengths differ from batch × sample length",
        ));
    }

    // Parameters, canonical layout, back to back (read in place: no copy of large
    // weights besides the embedded block or the weights file).
    let params = model.params();
    let floats = || params.iter().flat_map(|a| a.iter().copied());
    let lens: Vec<usize> = params.iter().map(|a| a.len()).collect();
    let mut offsets = Vec::with_capacity(lens.len());
    let mut total = 0usize;
    for &l in &lens {
        offsets.push(total);
        total += 4 * l;
    }
    let fwd = classify_buffers(module, &lens, &offsets, "the forward program")?;
    if fwd.cotangent.is_some() {
        return Err(Error::internal(
            "aot: the forward program reads a cotangent",
        ));
    }

    // The gradient program (inference mode), over its own buffer table.
    let grad = if opts.gradients {
        let g = crate::lower::grad::lower_gradients_for(
            graph,
            opts.batch,
            crate::lower::grad::Mode::Inference,
            tier,
        )?;
        verify(&g.forward)?;
        verify(&g.backward)?;
        Some(g)
    } else {
        None
    };
    let grad_binding = match &grad {
        Some(g) => Some(grad_table(
            g,
            &lens,
            &offsets,
            opts.batch * in_len,
            opts.batch * out_len,
        )?),
        None => None,
    };

    let triple = target.isa.triple().to_string();
    let builder = ObjectBuilder::new(target.isa, opts.name.as_bytes(), default_libcall_names())
        .map_err(|e| Error::internal(format!("aot: object builder: {e}")))?;
    let mut obj = ObjectModule::new(builder);
    let define = |obj: &mut ObjectModule, m: &crate::loop_ir::Module, tag: &str| {
        let prefix = format!("{}__{tag}", opts.name);
        define_kernels(obj, m, target.use_fma, true, false, &prefix, Linkage::Local)
    };
    let defined = define(&mut obj, module, "k")?;
    let grad_kernels = match &grad {
        Some(g) => Some((
            define(&mut obj, &g.forward, "gf")?.kernels,
            define(&mut obj, &g.backward, "gb")?.kernels,
        )),
        None => None,
    };
    let param_names: Vec<String> = graph
        .params
        .iter()
        .map(|p| format!("{}/{}", graph.nodes[p.node].name, p.name))
        .collect();
    let embedded = (opts.weights == WeightsMode::Embedded).then(|| {
        let mut w = Vec::with_capacity(total);
        for v in floats() {
            w.extend_from_slice(&v.to_le_bytes());
        }
        w
    });
    let spec = driver::DriverSpec {
        name: &opts.name,
        table: fwd,
        input_buf,
        output_buf,
        batch: opts.batch,
        in_len,
        out_len,
        in_shape: &in_shape,
        out_shape: &out_shape,
        embedded,
        weight_bytes: total,
        weights_header: weights::expected_header(&lens),
        param_lens: &lens,
        param_names: &param_names,
        grad: match (&grad, grad_binding, &grad_kernels) {
            (Some(g), Some((bind, input_buf, cotangent_buf, dinput_buf)), Some((gf, gb))) => {
                Some(driver::GradSpec {
                    table: bind,
                    input_buf,
                    cotangent_buf,
                    dinput_buf,
                    dparam_bufs: g.dparam_bufs.iter().map(|&b| b as usize).collect(),
                    forward: gf,
                    backward: gb,
                })
            }
            _ => None,
        },
    };
    driver::emit_driver(&mut obj, &spec, &defined.kernels)?;
    let object = obj
        .finish()
        .emit()
        .map_err(|e| Error::internal(format!("aot: cannot write the object: {e}")))?;
    let header = header::header(&header::HeaderSpec {
        name: &opts.name,
        model: &opts.model_label.replace("*/", "* /"),
        target: &triple,
        batch: opts.batch,
        in_shape: &in_shape,
        out_shape: &out_shape,
        embedded: opts.weights == WeightsMode::Embedded,
        gradients: opts.gradients,
        params: lens.len(),
    });
    Ok(AotArtifact {
        object,
        header,
        weights_file: (opts.weights == WeightsMode::File)
            .then(|| weights::encode_from(&lens, floats())),
        name: opts.name.clone(),
        triple,
        exports: EXPORTS
            .iter()
            .chain(if opts.gradients {
                &GRADIENT_EXPORTS[..]
            } else {
                &[]
            })
            .map(|e| format!("{}_{e}", opts.name))
            .collect(),
    })
}

/// The kind of library file, from the output's extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputKind {
    /// `.o`: the object itself.
    Object,
    /// `.a`: a static archive holding the object.
    Static,
    /// `.so`: a shared library linked by the system `cc`.
    Shared,
}

impl OutputKind {
    /// The kind named by `path`'s extension.
    pub fn of(path: &Path) -> Result<OutputKind> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("o") => Ok(OutputKind::Object),
            Some("a") => Ok(OutputKind::Static),
            Some("so") => Ok(OutputKind::Shared),
            _ => Err(Error::UnsupportedFile {
                path: path.to_path_buf(),
                expected: ".o, .a or .so",
            }),
        }
    }
}

/// A temporary file next to `path` (same directory, so `rename` is atomic).
fn temp_next_to(path: &Path, tag: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{tag}.{}.tmp", std::process::id()))
}

/// Writes `bytes` to `path` atomically (temporary file, then rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    crate::write_file::write_atomic(path, |w| w.write_all(bytes))
}

/// Writes the library (`.o`, `.a` or `.so` by `output`'s extension) and the header, each
/// atomically. `.so` needs the system C compiler `cc` (or `$CC`) as linker.
pub fn write_library(art: &AotArtifact, output: &Path, header_path: &Path) -> Result<()> {
    match OutputKind::of(output)? {
        OutputKind::Object => write_atomic(output, &art.object)?,
        OutputKind::Static => {
            let member = format!("{}.o", art.name);
            let bytes = archive::archive(&member, &art.object, &art.exports);
            write_atomic(output, &bytes)?;
        }
        OutputKind::Shared => link_shared(art, output)?,
    }
    write_atomic(header_path, art.header.as_bytes())
}

/// Links the object into a shared library with `cc -shared`.
fn link_shared(art: &AotArtifact, output: &Path) -> Result<()> {
    let obj = temp_next_to(output, "o");
    std::fs::write(&obj, &art.object).map_err(|e| Error::io(&obj, e))?;
    let tmp = temp_next_to(output, "so");
    let linked = cc_shared(&obj, &tmp, output);
    let _ = std::fs::remove_file(&obj);
    if let Err(e) = linked {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, output).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(output, e)
    })
}

/// Links the object file `obj` into the shared library `out` with the system C compiler
/// as linker (`$CC`, else `cc`): `cc -shared -o out obj`. `what` names the library in
/// errors, which are [`Error::Tool`] when the compiler cannot be run or fails.
pub(super) fn cc_shared(obj: &Path, out: &Path, what: &Path) -> Result<()> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let run = std::process::Command::new(&cc)
        .arg("-shared")
        .arg("-o")
        .arg(out)
        .arg(obj)
        .output();
    let tool = |detail: String| Error::Tool {
        tool: cc.clone(),
        detail,
    };
    match run {
        Err(e) => Err(tool(format!(
            "{}: linking a shared library needs a C compiler as linker, but '{cc}' could not \
             be run ({e}); install one (e.g. gcc) or set CC, or write a .o/.a instead",
            what.display()
        ))),
        Ok(o) if !o.status.success() => Err(tool(format!(
            "{}: '{cc} -shared' failed: {}",
            what.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        ))),
        Ok(_) => Ok(()),
    }
}
