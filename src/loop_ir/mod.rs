//! The loop IR: fixed-shape loop nests over flat f32 buffers with affine indices, whose
//! loops carry their schedule.
//!
//! A [`Module`] is what one model compiles to: a set of buffers (inputs, outputs,
//! parameters, constants, scratch activations) and a sequence of [`Kernel`]s run in order
//! (one or more per layer). A kernel is a loop nest. Indices are affine in the loop
//! variables with constant coefficients ([`Affine`]), so the verifier proves every access
//! in bounds by interval arithmetic, and the code generator folds them into base +
//! constant strides.
//!
//! Loop kinds are the schedule and never change the meaning: `Serial`, `Parallel` (the
//! iterations are split into contiguous chunks across threads; only a kernel's outermost
//! loop may be parallel and its iterations must write disjoint elements), `Vector(4)`
//! (lanes of an f32x4: the loop's variable may appear in buffer indices with coefficient
//! 0 — broadcast —, 1 — contiguous lanes — or another — strided lanes, gathered by a load
//! and scattered by a store — and in local indices with 0 or 1), `Unroll(n)` (the body
//! is replicated n times), `Wide(tier)` (a serial loop heading a register-tile
//! reduction that a target with the SIMD tier runs in wider registers, [`micro`]).
//! The interpreter ignores kinds; the verifier checks that they are legal.
//!
//! Locals are small per-kernel register tiles (accumulators). Their indices may only use
//! `Vector` and `Unroll` variables, so after unrolling every local element is a fixed
//! register. A local is private to the iteration of the enclosing loops that writes it.
//!
//! # NaN and infinities
//!
//! Every executor gives the same bits for every input, special values included, and the
//! operations are chosen so that the layers built from them follow TensorFlow's (Eigen's)
//! CPU kernels, which is what Keras computes:
//!
//! - arithmetic, `sqrt`, `Fma` and comparisons are IEEE 754 (a comparison with NaN is
//!   false, so a [`Expr::Select`] takes its `f` arm);
//! - [`BinOp::Max`] / [`BinOp::Min`] and [`UnOp::Relu`] *propagate* NaN, like `tf.maximum`,
//!   `tf.minimum`, `tf.nn.relu`, `relu6` and `clip_by_value` (so relu, relu6,
//!   hard_sigmoid and the Maximum/Minimum merges of NaN are NaN); ties, including `±0`,
//!   give the left operand, and `relu(−0) = −0` (the sign of a zero is not part of the
//!   contract with Keras, only equality across engines);
//! - [`UnOp::Exp`] is exact at the ends: `e^{+∞} = +∞` (overflow from 88.73 on), `e^{−∞} = 0`
//!   (gradual underflow to subnormals below −87.3), `e^{NaN} = NaN`; `tanh`, `sigmoid` and
//!   `erf` built on it give `±1`, `0`/`1` and `±1` at `±∞`, so swish, gelu and mish of `−∞`
//!   are `−∞·0 = NaN`, as in TensorFlow;
//! - max pooling is *not* a `Max` fold: TensorFlow's `MaxPool` ignores NaN taps and starts
//!   from `−FLT_MAX` (an all-NaN or all-`−∞` window gives `−3.4028235e38`), so the lowering
//!   spells it as a `Select` (`x > acc ? x : acc`); global max pooling and softmax's
//!   maximum use `Max` (`reduce_max` propagates NaN).
//!
//! This module knows nothing of layers or of Cranelift.

pub mod interp;
pub mod math;
pub mod micro;
pub mod print;
mod tail;
pub mod verify;
pub use tail::lanes_with_tail;

/// One buffer of a module's buffer table as a run binds it: every executor (the
/// interpreter, the JIT, compiled object code) takes the same table, one entry per
/// [`Module::buffers`] entry, in order.
#[derive(Debug)]
pub enum BufArg<'a> {
    /// A buffer the module only reads (inputs, parameters, constants): shared, never
    /// copied.
    Read(&'a [f32]),
    /// A buffer the module may write.
    Write(&'a mut [f32]),
    /// A read-only buffer stored in 16 bits per element, with its type (a
    /// [`Dtype::Bf16`] or [`Dtype::F16`] buffer of the module, see [`Buffer::dtype`]):
    /// loads widen each element to f32 exactly.
    ReadHalf(&'a [u16], Dtype),
}

impl BufArg<'_> {
    /// The buffer's f32 contents (`None` for a 16-bit binding).
    pub fn as_slice(&self) -> Option<&[f32]> {
        match self {
            BufArg::Read(r) => Some(r),
            BufArg::Write(w) => Some(w),
            BufArg::ReadHalf(..) => None,
        }
    }

    /// The buffer's contents for writing (`None` for a read-only binding).
    pub fn as_mut_slice(&mut self) -> Option<&mut [f32]> {
        match self {
            BufArg::Read(_) | BufArg::ReadHalf(..) => None,
            BufArg::Write(w) => Some(w),
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            BufArg::Read(r) => r.len(),
            BufArg::Write(w) => w.len(),
            BufArg::ReadHalf(h, _) => h.len(),
        }
    }

    /// Whether the buffer has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How a buffer stores its elements. Every computation is in f32: a 16-bit buffer is
/// read-only and each load widens its element to f32 exactly (the JIT with integer
/// SIMD), so executors agree bit for bit; only the bytes streamed from memory change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Dtype {
    /// IEEE single precision, 4 bytes.
    #[default]
    F32,
    /// bfloat16 (the upper half of an f32), 2 bytes: widening is a 16-bit shift.
    Bf16,
    /// IEEE half precision, 2 bytes.
    F16,
}

impl Dtype {
    /// Bytes per element.
    pub fn bytes(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::Bf16 | Dtype::F16 => 2,
        }
    }

    /// The name used on the command line and in printed IR (`f32`, `bf16`, `f16`).
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::Bf16 => "bf16",
            Dtype::F16 => "f16",
        }
    }

    /// A 16-bit element widened to f32 (exact; NaN payloads kept). `F32` is not a
    /// 16-bit type; its "widening" of the low bits is never asked for.
    pub fn widen(self, h: u16) -> f32 {
        match self {
            Dtype::Bf16 => f32::from_bits(u32::from(h) << 16),
            Dtype::F16 | Dtype::F32 => math::widen_f16(h),
        }
    }
}

/// A loop variable (index into the kernel's variables).
pub type Var = u32;
/// A buffer of the module.
pub type BufId = u32;
/// A local register tile of a kernel.
pub type LocalId = u32;

/// `offset + Σ coef·var`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Affine {
    /// Constant term.
    pub offset: i64,
    /// `(variable, coefficient)` terms; each variable appears at most once, no zero
    /// coefficients (kept canonical by the constructors).
    pub terms: Vec<(Var, i64)>,
}

impl Affine {
    /// The constant `c`.
    pub fn constant(c: i64) -> Self {
        Affine {
            offset: c,
            terms: Vec::new(),
        }
    }

    /// The variable `v`.
    pub fn var(v: Var) -> Self {
        Affine::constant(0).plus_term(v, 1)
    }

    /// `self + coef·v`.
    pub fn plus_term(mut self, v: Var, coef: i64) -> Self {
        if coef == 0 {
            return self;
        }
        if let Some(t) = self.terms.iter_mut().find(|t| t.0 == v) {
            t.1 += coef;
        } else {
            self.terms.push((v, coef));
        }
        self.terms.retain(|t| t.1 != 0);
        self.terms.sort_unstable();
        self
    }

    /// `self + c`.
    pub fn plus(mut self, c: i64) -> Self {
        self.offset += c;
        self
    }

    /// `self + other`.
    pub fn plus_affine(mut self, other: &Affine) -> Self {
        self.offset += other.offset;
        for &(v, c) in &other.terms {
            self = self.plus_term(v, c);
        }
        self
    }

    /// `k · self`.
    pub fn scale(mut self, k: i64) -> Self {
        self.offset *= k;
        for t in &mut self.terms {
            t.1 *= k;
        }
        self.terms.retain(|t| t.1 != 0);
        self
    }

    /// Coefficient of `v` (0 when absent).
    pub fn coef(&self, v: Var) -> i64 {
        self.terms
            .iter()
            .find(|t| t.0 == v)
            .map(|t| t.1)
            .unwrap_or(0)
    }

    /// Value at the given variable assignment.
    pub fn eval(&self, vars: &[i64]) -> i64 {
        self.terms
            .iter()
            .fold(self.offset, |acc, &(v, c)| acc + c * vars[v as usize])
    }
}

/// What a buffer holds.
#[derive(Clone, Debug, PartialEq)]
pub enum BufRole {
    /// Model input `i`.
    Input(usize),
    /// Model output `i`.
    Output(usize),
    /// Graph parameter `i` (canonical layout).
    Param(usize),
    /// Constant data baked in at lowering time (e.g. averaging divisors).
    Const(Vec<f32>),
    /// An intermediate activation; the memory plan may share its storage with other
    /// scratch buffers whose lifetimes do not overlap.
    Scratch,
    /// Gradient programs: the cotangent of model output `i` (read-only, like an input).
    Cotangent(usize),
    /// Gradient programs: the gradient of model input `i` (written).
    GradInput(usize),
    /// Gradient programs: the gradient of graph parameter `i`, canonical layout (written).
    GradParam(usize),
    /// Training programs: per-call data computed on the host, read-only (e.g. the
    /// dropout mask of the `i`-th Dropout layer, drawn from the step's seeded generator).
    Aux(usize),
    /// Gradient programs: a forward value the host reads between phase 1 and phase 2
    /// (the output of the `i`-th activity-regularized layer); written, never shared.
    Kept(usize),
    /// Training programs with a fused optimizer update: graph parameter `i` (canonical
    /// layout), read by the forward pass and updated in place by the backward kernel that
    /// completes its gradient. Bound to the caller's storage for each run.
    Updated(usize),
    /// Training programs with a fused optimizer update: slot `j` (in the rule's slot
    /// order) of graph parameter `i`, updated in place. Bound to the caller's storage.
    Slot(usize, usize),
    /// Training programs with a fused optimizer update: the step's scalars (learning
    /// rate, the rule's per-step values), filled on the host; read-only.
    Hyper,
}

impl BufRole {
    /// Whether the program only reads this buffer (the verifier rejects stores to it).
    pub fn is_read_only(&self) -> bool {
        matches!(
            self,
            BufRole::Input(_)
                | BufRole::Param(_)
                | BufRole::Const(_)
                | BufRole::Cotangent(_)
                | BufRole::Aux(_)
                | BufRole::Hyper
        )
    }

    /// Whether the caller binds its own storage to this writable buffer for every run
    /// (a parameter or an optimizer slot updated in place), rather than the program's
    /// pool providing it.
    pub fn is_bound(&self) -> bool {
        matches!(self, BufRole::Updated(_) | BufRole::Slot(..))
    }
}

/// A flat buffer of f32 values.
#[derive(Clone, Debug, PartialEq)]
pub struct Buffer {
    /// Name shown by the printer.
    pub name: String,
    /// Number of elements.
    pub len: usize,
    /// What it holds.
    pub role: BufRole,
    /// How its elements are stored: f32, or for read-only buffers 16 bits widened on
    /// load (the verifier rejects a 16-bit buffer that is written).
    pub dtype: Dtype,
}

impl Buffer {
    /// An f32 buffer.
    pub fn new(name: impl Into<String>, len: usize, role: BufRole) -> Buffer {
        Buffer {
            name: name.into(),
            len,
            role,
            dtype: Dtype::F32,
        }
    }
}

/// A register tile of a kernel.
#[derive(Clone, Debug, PartialEq)]
pub struct Local {
    /// Name shown by the printer.
    pub name: String,
    /// Number of f32 elements.
    pub len: usize,
}

/// The schedule of a loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LoopKind {
    /// Plain loop.
    Serial,
    /// Iterations split across threads in contiguous chunks.
    Parallel,
    /// Lanes of a SIMD vector of this width (4 for f32x4).
    Vector(u32),
    /// Body replicated this many times.
    Unroll(u32),
    /// A serial loop heading a register-tile reduction that a target with the tier runs
    /// as one wide microkernel (see [`micro`]; the verifier checks the nest's shape).
    Wide(micro::Wide),
}

/// Unary operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnOp {
    /// `-x`.
    Neg,
    /// `|x|`.
    Abs,
    /// `sqrt(x)`.
    Sqrt,
    /// `max(x, 0)` propagating NaN: `x < 0 ? 0 : x` (see [`interp::relu`]).
    Relu,
    /// `e^x` (polynomial, see [`math`]; `+∞` on overflow, `0` on underflow).
    Exp,
    /// `ln(x)` (polynomial, see [`math`]).
    Log,
    /// `tanh(x)` (via exp).
    Tanh,
    /// `1/(1+e^{-x})` (via exp).
    Sigmoid,
    /// `erf(x)` (polynomial).
    Erf,
    /// `x` rounded to IEEE half precision and back (round to nearest even, half
    /// subnormals kept, overflow to ±∞, NaN unchanged): the `float16` compute dtype of a
    /// mixed-precision layer (see [`math::round_f16`]).
    RoundF16,
    /// `x` rounded to bfloat16 and back (round to nearest even, NaN unchanged): the
    /// `mixed_bfloat16` compute dtype (see [`math::round_bf16`]).
    RoundBf16,
}

/// Binary operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinOp {
    /// `a + b`.
    Add,
    /// `a − b`.
    Sub,
    /// `a · b`.
    Mul,
    /// `a / b`.
    Div,
    /// `max(a, b)` propagating NaN: `b` if `b` is NaN, else `a < b ? b : a` (see
    /// [`interp::max`]).
    Max,
    /// `min(a, b)` propagating NaN: `b` if `b` is NaN, else `b < a ? b : a`.
    Min,
}

/// Comparison of a [`Expr::Select`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CmpOp {
    /// `a < b`.
    Lt,
    /// `a <= b`.
    Le,
    /// `a > b`.
    Gt,
    /// `a >= b`.
    Ge,
}

/// A scalar (or, inside a vector loop, lane-wise) f32 expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    /// A constant.
    Const(f32),
    /// `buf[index]`.
    Load {
        /// Buffer.
        buf: BufId,
        /// Element index.
        index: Affine,
    },
    /// `local[index]`.
    LoadLocal {
        /// Local tile.
        local: LocalId,
        /// Element index.
        index: Affine,
    },
    /// A unary operation.
    Unary(UnOp, Box<Expr>),
    /// A binary operation.
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// `a·b + c`, fused (one rounding) where the host has FMA.
    Fma(Box<Expr>, Box<Expr>, Box<Expr>),
    /// `if a (cmp) b { t } else { f }`.
    Select {
        /// Comparison.
        cmp: CmpOp,
        /// Left operand.
        a: Box<Expr>,
        /// Right operand.
        b: Box<Expr>,
        /// Value when true.
        t: Box<Expr>,
        /// Value when false.
        f: Box<Expr>,
    },
}

/// A statement of a kernel.
#[derive(Clone, Debug, PartialEq)]
pub enum Stmt {
    /// `for var in 0..extent { body }` with a schedule.
    For {
        /// Loop variable.
        var: Var,
        /// Trip count.
        extent: u64,
        /// Schedule.
        kind: LoopKind,
        /// Body.
        body: Vec<Stmt>,
    },
    /// Runs `body` only when every `lo <= index < hi` holds (used for clipped windows
    /// and padding). Conditions may not depend on a `Vector` variable.
    If {
        /// `(index, lo, hi)` conditions, all of which must hold.
        conds: Vec<(Affine, i64, i64)>,
        /// Body.
        body: Vec<Stmt>,
    },
    /// `buf[index] = value`.
    Store {
        /// Buffer.
        buf: BufId,
        /// Element index.
        index: Affine,
        /// Value.
        value: Expr,
    },
    /// `local[index] = value`.
    SetLocal {
        /// Local tile.
        local: LocalId,
        /// Element index.
        index: Affine,
        /// Value.
        value: Expr,
    },
}

/// One loop nest.
#[derive(Clone, Debug, PartialEq)]
pub struct Kernel {
    /// Name (layer and pass, e.g. `L4.forward`).
    pub name: String,
    /// Number of loop variables used (`Var`s are `0..vars`).
    pub vars: u32,
    /// Names of the loop variables, for printing.
    pub var_names: Vec<String>,
    /// Register tiles.
    pub locals: Vec<Local>,
    /// Statements.
    pub body: Vec<Stmt>,
    /// The schedule the lowering chose for this kernel, as text (e.g.
    /// `lc.forward(vec=filters, tile=4x8, …)`), printed with the kernel; `None` for
    /// kernels whose lowering has no schedule choices recorded. Never read by the
    /// executors: the loops themselves carry the schedule.
    pub schedule: Option<String>,
}

/// A whole program: buffers and the kernels that run over them, in order.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Module {
    /// Name (the model's).
    pub name: String,
    /// Buffers.
    pub buffers: Vec<Buffer>,
    /// Kernels, run in order.
    pub kernels: Vec<Kernel>,
}

/// Helper to build kernels: fresh variables, locals and nested loops.
#[derive(Debug, Default)]
pub struct KernelBuilder {
    name: String,
    var_names: Vec<String>,
    locals: Vec<Local>,
    schedule: Option<String>,
}

impl KernelBuilder {
    /// Starts a kernel.
    pub fn new(name: impl Into<String>) -> Self {
        KernelBuilder {
            name: name.into(),
            ..Default::default()
        }
    }

    /// A fresh loop variable.
    pub fn var(&mut self, name: &str) -> Var {
        self.var_names.push(name.to_string());
        (self.var_names.len() - 1) as Var
    }

    /// A fresh local tile of `len` elements.
    pub fn local(&mut self, name: &str, len: usize) -> LocalId {
        self.locals.push(Local {
            name: name.to_string(),
            len,
        });
        (self.locals.len() - 1) as LocalId
    }

    /// Records the schedule text shown with the kernel (see [`Kernel::schedule`]).
    pub fn schedule(&mut self, text: impl Into<String>) {
        self.schedule = Some(text.into());
    }

    /// Finishes the kernel with `body`.
    pub fn finish(self, body: Vec<Stmt>) -> Kernel {
        Kernel {
            name: self.name,
            vars: self.var_names.len() as u32,
            var_names: self.var_names,
            locals: self.locals,
            body,
            schedule: self.schedule,
        }
    }
}

/// `for var in 0..extent (kind) { body }`.
pub fn for_(var: Var, extent: u64, kind: LoopKind, body: Vec<Stmt>) -> Stmt {
    Stmt::For {
        var,
        extent,
        kind,
        body,
    }
}

/// `buf[index]`.
pub fn load(buf: BufId, index: Affine) -> Expr {
    Expr::Load { buf, index }
}

/// `local[index]`.
pub fn load_local(local: LocalId, index: Affine) -> Expr {
    Expr::LoadLocal { local, index }
}

/// `a op b`.
pub fn bin(op: BinOp, a: Expr, b: Expr) -> Expr {
    Expr::Binary(op, Box::new(a), Box::new(b))
}

/// `op(a)`.
pub fn un(op: UnOp, a: Expr) -> Expr {
    Expr::Unary(op, Box::new(a))
}

/// `a·b + c`.
pub fn fma(a: Expr, b: Expr, c: Expr) -> Expr {
    Expr::Fma(Box::new(a), Box::new(b), Box::new(c))
}
