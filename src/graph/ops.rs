//! Typed layer operations of the graph IR.
//!
//! An [`Op`] holds everything a layer needs to run, already resolved from whichever Keras
//! dialect it came from: sizes are explicit per spatial axis, data formats and paddings
//! are enums, activations and initializers are typed. Shapes never include the batch
//! axis. Invariants (checked by the front end and by shape inference, relied upon by every
//! back end): spatial vectors (`kernel`, `strides`, `dilation`, `pool`…) have exactly
//! `rank` entries, every size is ≥ 1, and `filters`/`units` are ≥ 1.

/// Memory order of a tensor with channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataFormat {
    /// `(spatial…, C)`, Keras `channels_last` / Keras 1 `tf`.
    ChannelsLast,
    /// `(C, spatial…)`, Keras `channels_first` / Keras 1 `th`.
    ChannelsFirst,
}

impl DataFormat {
    /// The Keras name.
    pub fn keras_name(self) -> &'static str {
        match self {
            DataFormat::ChannelsLast => "channels_last",
            DataFormat::ChannelsFirst => "channels_first",
        }
    }
}

/// Padding mode. Its meaning depends on the layer: for locally connected layers `Same`
/// means Keras's clipped windows starting at `o·s − floor(k/2)` (keras-lc-semantics §3.4);
/// for convolutions and pooling it means TensorFlow's `SAME` (`pad_before =
/// floor(total/2)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Padding {
    /// No padding: windows lie entirely inside the input.
    Valid,
    /// Output size `ceil(n / s)`.
    Same,
    /// Conv1D only: left padding of `dilation·(k−1)`.
    Causal,
}

impl Padding {
    /// The Keras name.
    pub fn keras_name(self) -> &'static str {
        match self {
            Padding::Valid => "valid",
            Padding::Same => "same",
            Padding::Causal => "causal",
        }
    }
}

/// An elementwise activation function (softmax-like ones act along the last axis).
#[derive(Clone, Debug, PartialEq)]
pub enum Activation {
    /// Identity.
    Linear,
    /// `max(x, 0)`, with Keras's optional negative slope, cap and threshold:
    /// `x ≥ max_value → max_value`, `threshold ≤ x < max_value → x`,
    /// `x < threshold → alpha·(x − threshold)`.
    Relu {
        /// Slope below the threshold.
        alpha: f32,
        /// Upper cap, if any.
        max_value: Option<f32>,
        /// Threshold below which the slope applies.
        threshold: f32,
    },
    /// `1 / (1 + e^{−x})`.
    Sigmoid,
    /// Hyperbolic tangent.
    Tanh,
    /// Softmax along `axis` (an index into the per-sample shape, negative from the end).
    Softmax {
        /// Axis, Keras-style (−1 is the last axis; batch axis excluded).
        axis: i64,
    },
    /// Log-softmax along the last axis.
    LogSoftmax,
    /// `x` for `x > 0`, `alpha·(e^x − 1)` otherwise.
    Elu {
        /// Negative-side scale.
        alpha: f32,
    },
    /// Scaled ELU with Keras's constants.
    Selu,
    /// `ln(1 + e^x)`.
    Softplus,
    /// `x / (1 + |x|)`.
    Softsign,
    /// `clip(0.2·x + 0.5, 0, 1)` (Keras 2 / tf-keras definition).
    HardSigmoid,
    /// `e^x`.
    Exponential,
    /// `x · sigmoid(x)` (also `silu`).
    Swish,
    /// `x · Φ(x)`, exact (erf) or the tanh approximation.
    Gelu {
        /// Whether the tanh approximation is used.
        approximate: bool,
    },
    /// `min(max(x, 0), 6)`.
    Relu6,
    /// `x · tanh(softplus(x))`.
    Mish,
    /// `x` for `x ≥ 0`, `alpha·x` otherwise.
    LeakyRelu {
        /// Negative slope.
        alpha: f32,
    },
}

/// How a weight is initialized when no weights file is given.
#[derive(Clone, Debug, PartialEq)]
pub enum Initializer {
    /// All zeros.
    Zeros,
    /// All ones.
    Ones,
    /// A constant.
    Constant(f32),
    /// Normal distribution.
    RandomNormal {
        /// Mean.
        mean: f32,
        /// Standard deviation.
        stddev: f32,
    },
    /// Uniform on `[minval, maxval)`.
    RandomUniform {
        /// Lower bound.
        minval: f32,
        /// Upper bound.
        maxval: f32,
    },
    /// Normal redrawn beyond two standard deviations.
    TruncatedNormal {
        /// Mean.
        mean: f32,
        /// Standard deviation.
        stddev: f32,
    },
    /// Keras `VarianceScaling` (glorot, he and lecun are instances of it).
    VarianceScaling {
        /// Scale factor.
        scale: f32,
        /// Which fan divides the scale.
        mode: FanMode,
        /// Sampling distribution.
        distribution: Distribution,
    },
    /// Orthogonal matrix times `gain` (rank ≥ 2).
    Orthogonal {
        /// Multiplier.
        gain: f32,
    },
    /// `gain · I` (rank 2 only).
    Identity {
        /// Multiplier.
        gain: f32,
    },
}

/// Which fan a variance-scaling initializer divides by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FanMode {
    /// `fan_in`.
    FanIn,
    /// `fan_out`.
    FanOut,
    /// `(fan_in + fan_out) / 2`.
    FanAvg,
}

/// Sampling distribution of a variance-scaling initializer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Distribution {
    /// Truncated normal with tf-keras's 0.8796… correction.
    TruncatedNormal,
    /// Truncated normal without that correction (Keras 2.0–2.1 `normal`).
    TruncatedNormalUncorrected,
    /// Plain normal.
    UntruncatedNormal,
    /// Uniform on `±sqrt(3·scale/n)`.
    Uniform,
}

/// The dtype in which a layer computes under its Keras dtype policy. Variables are
/// float32 under every supported policy; `mixed_float16` / `mixed_bfloat16` compute in
/// half precision / bfloat16: the layer casts its inputs and weights to that dtype, and
/// each op's result is rounded to it (see the README, "Mixed precision").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ComputeDtype {
    /// `float32` (the default policy).
    #[default]
    Float32,
    /// `mixed_float16`.
    Float16,
    /// `mixed_bfloat16`.
    BFloat16,
}

/// A layer's Keras dtype policy, as the configuration gave it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DtypePolicy {
    /// The compute dtype.
    pub compute: ComputeDtype,
    /// Whether the configuration wrote the policy as a `Policy` object (tf-keras 2.x
    /// `get_config`) rather than a name string; saving writes it back the same way.
    pub as_object: bool,
}

impl DtypePolicy {
    /// The Keras policy name (`float32`, `mixed_float16`, `mixed_bfloat16`).
    pub fn name(&self) -> &'static str {
        match self.compute {
            ComputeDtype::Float32 => "float32",
            ComputeDtype::Float16 => "mixed_float16",
            ComputeDtype::BFloat16 => "mixed_bfloat16",
        }
    }

    /// Whether the layer computes in a narrower dtype than float32.
    pub fn is_mixed(&self) -> bool {
        self.compute != ComputeDtype::Float32
    }
}

/// A weight or activity regularizer: `l1·Σ|x| + l2·Σx²`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Regularizer {
    /// L1 factor.
    pub l1: f32,
    /// L2 factor.
    pub l2: f32,
}

/// A constraint applied to a weight after each optimizer update.
#[derive(Clone, Debug, PartialEq)]
pub enum Constraint {
    /// `w · clip(‖w‖, 0, max) / (ε + ‖w‖)` along `axis`.
    MaxNorm {
        /// Upper bound of the norm.
        max_value: f32,
        /// Axes of the norm (Keras layout).
        axis: Vec<i64>,
    },
    /// `w · [w ≥ 0]`.
    NonNeg,
    /// `w / (ε + ‖w‖)` along `axis`.
    UnitNorm {
        /// Axes of the norm (Keras layout).
        axis: Vec<i64>,
    },
    /// `w · (rate·clip(‖w‖, min, max) + (1−rate)·‖w‖) / (ε + ‖w‖)` along `axis`.
    MinMaxNorm {
        /// Lower bound.
        min_value: f32,
        /// Upper bound.
        max_value: f32,
        /// Interpolation rate.
        rate: f32,
        /// Axes of the norm (Keras layout).
        axis: Vec<i64>,
    },
    /// Keras `RadialConstraint` (rank-4 weights only).
    Radial,
}

/// Regularizers and constraints of a layer with a kernel and a bias.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WeightOptions {
    /// Kernel regularizer.
    pub kernel_regularizer: Option<Regularizer>,
    /// Bias regularizer.
    pub bias_regularizer: Option<Regularizer>,
    /// Activity regularizer (on the layer's output, after activation).
    pub activity_regularizer: Option<Regularizer>,
    /// Kernel constraint.
    pub kernel_constraint: Option<Constraint>,
    /// Bias constraint.
    pub bias_constraint: Option<Constraint>,
}

/// A locally connected layer of spatial rank 1, 2 or 3 (3 and dilation are lcjit
/// extensions; see the README for their configuration keys).
#[derive(Clone, Debug, PartialEq)]
pub struct LocallyConnected {
    /// Spatial rank: 1, 2 or 3.
    pub rank: usize,
    /// Output channels `F`.
    pub filters: usize,
    /// Kernel size per spatial axis.
    pub kernel: Vec<usize>,
    /// Stride per spatial axis.
    pub strides: Vec<usize>,
    /// Dilation per spatial axis (1 in Keras).
    pub dilation: Vec<usize>,
    /// `Valid`, or `Same` in Keras's clipped-window sense.
    pub padding: Padding,
    /// Memory order of input and output.
    pub data_format: DataFormat,
    /// Activation fused after the bias.
    pub activation: Activation,
    /// Whether there is a bias.
    pub use_bias: bool,
    /// Keras `implementation` (1, 2 or 3): the kernel layout in files.
    pub implementation: u8,
    /// Kernel initializer.
    pub kernel_initializer: Initializer,
    /// Bias initializer.
    pub bias_initializer: Initializer,
    /// Regularizers and constraints.
    pub options: WeightOptions,
}

/// A fully connected layer on the last axis.
#[derive(Clone, Debug, PartialEq)]
pub struct Dense {
    /// Output size.
    pub units: usize,
    /// Activation.
    pub activation: Activation,
    /// Whether there is a bias.
    pub use_bias: bool,
    /// Kernel initializer.
    pub kernel_initializer: Initializer,
    /// Bias initializer.
    pub bias_initializer: Initializer,
    /// Regularizers and constraints.
    pub options: WeightOptions,
}

/// A convolution of spatial rank 1 or 2 (weights shared across positions).
#[derive(Clone, Debug, PartialEq)]
pub struct Conv {
    /// Spatial rank: 1 or 2.
    pub rank: usize,
    /// Output channels.
    pub filters: usize,
    /// Kernel size per spatial axis.
    pub kernel: Vec<usize>,
    /// Stride per spatial axis.
    pub strides: Vec<usize>,
    /// Dilation per spatial axis.
    pub dilation: Vec<usize>,
    /// `Valid`, TF `Same`, or `Causal` (1D).
    pub padding: Padding,
    /// Memory order.
    pub data_format: DataFormat,
    /// Channel groups (input and output channels split evenly).
    pub groups: usize,
    /// Activation.
    pub activation: Activation,
    /// Whether there is a bias.
    pub use_bias: bool,
    /// Kernel initializer.
    pub kernel_initializer: Initializer,
    /// Bias initializer.
    pub bias_initializer: Initializer,
    /// Regularizers and constraints.
    pub options: WeightOptions,
}

/// Max or average.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    /// Maximum over the window.
    Max,
    /// Mean over the window (TF `same`: only the in-bounds elements are counted).
    Average,
}

/// Max or average pooling over spatial windows.
#[derive(Clone, Debug, PartialEq)]
pub struct Pool {
    /// Max or average.
    pub kind: PoolKind,
    /// Spatial rank: 1 or 2.
    pub rank: usize,
    /// Window size per spatial axis.
    pub pool: Vec<usize>,
    /// Stride per spatial axis.
    pub strides: Vec<usize>,
    /// `Valid` or TF `Same`.
    pub padding: Padding,
    /// Memory order.
    pub data_format: DataFormat,
}

/// Elementwise merge of several tensors of one shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MergeKind {
    /// Sum.
    Add,
    /// First minus second (exactly two inputs).
    Subtract,
    /// Product.
    Multiply,
    /// Mean.
    Average,
    /// Elementwise maximum.
    Maximum,
    /// Elementwise minimum.
    Minimum,
}

/// Batch normalization; at inference it uses the moving statistics.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchNorm {
    /// Normalized axis, as an index into the per-sample shape (resolved, non-negative).
    pub axis: usize,
    /// Added to the variance.
    pub epsilon: f32,
    /// Moving-average momentum (training).
    pub momentum: f32,
    /// Whether `beta` exists.
    pub center: bool,
    /// Whether `gamma` exists.
    pub scale: bool,
    /// Initializers of gamma, beta, moving mean and moving variance.
    pub initializers: [Initializer; 4],
    /// Gamma and beta regularizers (`kernel_*` slots hold gamma's, `bias_*` beta's).
    pub options: WeightOptions,
}

/// One graph operation. Every variant documents its inputs; all have one output.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// A model input of the node's shape.
    Input,
    /// LocallyConnected1D/2D/3D.
    LocallyConnected(LocallyConnected),
    /// Dense.
    Dense(Dense),
    /// Conv1D/Conv2D.
    Conv(Conv),
    /// MaxPooling/AveragePooling 1D/2D.
    Pool(Pool),
    /// GlobalMax/GlobalAveragePooling 1D/2D.
    GlobalPool {
        /// Max or average.
        kind: PoolKind,
        /// Spatial rank.
        rank: usize,
        /// Memory order.
        data_format: DataFormat,
        /// Whether reduced axes are kept with size 1.
        keepdims: bool,
    },
    /// ZeroPadding1D/2D: `(before, after)` per spatial axis.
    ZeroPadding {
        /// Spatial rank.
        rank: usize,
        /// Zeros added before and after, per spatial axis.
        pads: Vec<(usize, usize)>,
        /// Memory order.
        data_format: DataFormat,
    },
    /// Cropping1D/2D: `(before, after)` per spatial axis.
    Cropping {
        /// Spatial rank.
        rank: usize,
        /// Elements removed before and after, per spatial axis.
        crops: Vec<(usize, usize)>,
        /// Memory order.
        data_format: DataFormat,
    },
    /// Flatten; for `ChannelsFirst` Keras first moves channels last.
    Flatten {
        /// Memory order of the input.
        data_format: DataFormat,
    },
    /// Reshape to a per-sample shape (a `-1` is resolved during inference).
    Reshape {
        /// Target shape as written in the config (`-1` allowed once).
        target: Vec<i64>,
    },
    /// Permute per-sample axes; `dims` are 1-based as in Keras.
    Permute {
        /// The permutation, 1-based.
        dims: Vec<usize>,
    },
    /// Dropout / SpatialDropout: identity at inference.
    Dropout {
        /// Drop rate.
        rate: f32,
        /// Spatial variant: whole channels are dropped (rank of the spatial dims).
        spatial: Option<usize>,
        /// Memory order for spatial dropout.
        data_format: DataFormat,
    },
    /// BatchNormalization.
    BatchNorm(BatchNorm),
    /// Activation layer, ReLU, LeakyReLU, ELU, Softmax layers.
    Activation(Activation),
    /// Add, Subtract, Multiply, Average, Maximum, Minimum.
    Merge(MergeKind),
    /// Concatenate along `axis` (an index into the per-sample shape, resolved).
    Concatenate {
        /// Axis, resolved to a non-negative per-sample axis.
        axis: usize,
    },
}

impl Op {
    /// The layer's `activity_regularizer` (penalty on its post-activation output), for
    /// the layers that have one.
    pub fn activity_regularizer(&self) -> Option<Regularizer> {
        match self {
            Op::LocallyConnected(l) => l.options.activity_regularizer,
            Op::Dense(d) => d.options.activity_regularizer,
            Op::Conv(c) => c.options.activity_regularizer,
            _ => None,
        }
    }

    /// The slot of [`Self::activity_regularizer`], for the layers that have one.
    pub fn activity_regularizer_mut(&mut self) -> Option<&mut Option<Regularizer>> {
        match self {
            Op::LocallyConnected(l) => Some(&mut l.options.activity_regularizer),
            Op::Dense(d) => Some(&mut d.options.activity_regularizer),
            Op::Conv(c) => Some(&mut c.options.activity_regularizer),
            _ => None,
        }
    }

    /// Short name used by printers and summaries (the Keras class name).
    pub fn kind_name(&self) -> String {
        match self {
            Op::Input => "InputLayer".into(),
            Op::LocallyConnected(l) => format!("LocallyConnected{}D", l.rank),
            Op::Dense(_) => "Dense".into(),
            Op::Conv(c) => format!("Conv{}D", c.rank),
            Op::Pool(p) => match p.kind {
                PoolKind::Max => format!("MaxPooling{}D", p.rank),
                PoolKind::Average => format!("AveragePooling{}D", p.rank),
            },
            Op::GlobalPool { kind, rank, .. } => match kind {
                PoolKind::Max => format!("GlobalMaxPooling{rank}D"),
                PoolKind::Average => format!("GlobalAveragePooling{rank}D"),
            },
            Op::ZeroPadding { rank, .. } => format!("ZeroPadding{rank}D"),
            Op::Cropping { rank, .. } => format!("Cropping{rank}D"),
            Op::Flatten { .. } => "Flatten".into(),
            Op::Reshape { .. } => "Reshape".into(),
            Op::Permute { .. } => "Permute".into(),
            Op::Dropout { spatial: None, .. } => "Dropout".into(),
            Op::Dropout {
                spatial: Some(r), ..
            } => format!("SpatialDropout{r}D"),
            Op::BatchNorm(_) => "BatchNormalization".into(),
            Op::Activation(_) => "Activation".into(),
            Op::Merge(k) => format!("{k:?}"),
            Op::Concatenate { .. } => "Concatenate".into(),
        }
    }
}
