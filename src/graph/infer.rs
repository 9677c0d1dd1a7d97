//! Shape inference: the output shape and parameter specifications of one layer, computed
//! from its input shapes when the layer is added to the graph.
//!
//! Every error names the layer. Arithmetic on sizes is checked, so absurd configurations
//! (filters 10^12, kernels larger than the input) are rejected here, before anything is
//! allocated.

use super::geometry::{lc_window_start, output_len};
use super::ops::*;
use super::ParamSpec;
use crate::error::{Error, Result};

/// Output of inference for one layer.
#[derive(Clone, Debug)]
pub struct Inferred {
    /// Per-sample output shape.
    pub shape: Vec<usize>,
    /// Parameter specs (their `node` field is filled in by the graph).
    pub params: Vec<ParamSpec>,
}

fn err<T>(layer: &str, detail: impl Into<String>) -> Result<T> {
    Err(Error::shape(layer, detail))
}

fn one_input<'a>(layer: &str, inputs: &'a [Vec<usize>]) -> Result<&'a [usize]> {
    match inputs {
        [x] => Ok(x),
        _ => err(layer, format!("expects 1 input, got {}", inputs.len())),
    }
}

fn mul(layer: &str, xs: &[usize]) -> Result<usize> {
    crate::size::elems(xs).map_err(|_| Error::shape(layer, format!("size {xs:?} overflows")))
}

/// Splits a per-sample shape of spatial rank `rank` into `(spatial, channels)`.
pub fn split_channels(
    layer: &str,
    shape: &[usize],
    rank: usize,
    df: DataFormat,
) -> Result<(Vec<usize>, usize)> {
    if shape.len() != rank + 1 {
        return err(
            layer,
            format!(
                "expects an input of rank {} per sample (spatial rank {rank} plus channels), got shape {shape:?}",
                rank + 1
            ),
        );
    }
    Ok(match df {
        DataFormat::ChannelsLast => (shape[..rank].to_vec(), shape[rank]),
        DataFormat::ChannelsFirst => (shape[1..].to_vec(), shape[0]),
    })
}

/// Joins spatial sizes and channels in `df` order.
pub fn join_channels(spatial: &[usize], c: usize, df: DataFormat) -> Vec<usize> {
    let mut v = Vec::with_capacity(spatial.len() + 1);
    match df {
        DataFormat::ChannelsLast => {
            v.extend_from_slice(spatial);
            v.push(c);
        }
        DataFormat::ChannelsFirst => {
            v.push(c);
            v.extend_from_slice(spatial);
        }
    }
    v
}

fn spatial_out(
    layer: &str,
    spatial: &[usize],
    k: &[usize],
    s: &[usize],
    d: &[usize],
    padding: Padding,
) -> Result<Vec<usize>> {
    let mut out = Vec::with_capacity(spatial.len());
    for a in 0..spatial.len() {
        match output_len(spatial[a], k[a], s[a], d[a], padding) {
            Some(o) => out.push(o),
            None => {
                return err(
                    layer,
                    format!(
                        "output size along spatial axis {a} is <= 0: input {}, kernel {}, stride {}, dilation {}, padding {}",
                        spatial[a], k[a], s[a], d[a], padding.keras_name()
                    ),
                )
            }
        }
    }
    Ok(out)
}

fn check_vec(layer: &str, field: &str, v: &[usize], rank: usize) -> Result<()> {
    if v.len() != rank {
        return err(
            layer,
            format!("{field} has {} entries, expected {rank}", v.len()),
        );
    }
    if v.contains(&0) {
        return err(layer, format!("{field} {v:?} contains 0"));
    }
    Ok(())
}

/// Number of taps of the window of output `o` that lie inside `[0, n)`: the taps
/// `t < k` with `0 ≤ start + t·d < n`, counted in O(1) (a fuzzed kernel of 2^31 taps
/// made the former walk over every tap take minutes).
pub fn lc_taps_in_range(o: usize, n: usize, k: usize, s: usize, d: usize, p: Padding) -> usize {
    let start = i128::from(lc_window_start(o, k, s, d, p));
    let (n, k, d) = (n as i128, k as i128, d.max(1) as i128);
    if k == 0 || n == 0 || start >= n {
        return 0;
    }
    // First tap at or after 0 and last tap before n (integer division rounds down
    // for the non-negative numerators used here).
    let first = if start >= 0 { 0 } else { (-start + d - 1) / d };
    let last = ((n - 1 - start) / d).min(k - 1);
    if last < first {
        0
    } else {
        (last - first + 1) as usize
    }
}

/// The Keras file shape of an LC kernel for its `implementation` (keras-lc-semantics
/// §2.1; implementation 3 is `(nnz,)` counting only in-range taps).
pub fn lc_keras_kernel_shape(
    layer: &str,
    lc: &LocallyConnected,
    in_spatial: &[usize],
    c: usize,
    out_spatial: &[usize],
) -> Result<Vec<usize>> {
    let f = lc.filters;
    let p = mul(layer, out_spatial)?;
    let q = mul(layer, &lc.kernel)?
        .checked_mul(c)
        .ok_or_else(|| Error::shape(layer, "patch size overflows"))?;
    Ok(match lc.implementation {
        1 => vec![p, q, f],
        2 => {
            let mut v = Vec::new();
            match lc.data_format {
                DataFormat::ChannelsLast => {
                    v.extend_from_slice(in_spatial);
                    v.push(c);
                    v.extend_from_slice(out_spatial);
                    v.push(f);
                }
                DataFormat::ChannelsFirst => {
                    v.push(c);
                    v.extend_from_slice(in_spatial);
                    v.push(f);
                    v.extend_from_slice(out_spatial);
                }
            }
            mul(layer, &v)?;
            v
        }
        3 => {
            // nnz = Σ_positions Π_axes (taps in range) · C · F; the per-axis counts factor.
            let mut windows: usize = 1;
            for a in 0..lc.rank {
                let sum: usize = (0..out_spatial[a])
                    .map(|o| {
                        lc_taps_in_range(
                            o,
                            in_spatial[a],
                            lc.kernel[a],
                            lc.strides[a],
                            lc.dilation[a],
                            lc.padding,
                        )
                    })
                    .sum();
                windows = windows
                    .checked_mul(sum)
                    .ok_or_else(|| Error::shape(layer, "kernel size overflows"))?;
            }
            vec![mul(layer, &[windows, c, f])?]
        }
        other => return err(layer, format!("unknown implementation {other}")),
    })
}

fn spec(
    name: &str,
    shape: Vec<usize>,
    keras_shape: Vec<usize>,
    trainable: bool,
    initializer: Initializer,
    regularizer: Option<Regularizer>,
    constraint: Option<Constraint>,
) -> ParamSpec {
    ParamSpec {
        node: 0,
        name: name.to_string(),
        shape,
        keras_shape,
        trainable,
        initializer,
        regularizer,
        constraint,
    }
}

fn lc(layer: &str, l: &LocallyConnected, x: &[usize]) -> Result<Inferred> {
    if !(1..=3).contains(&l.rank) {
        return err(layer, format!("unsupported spatial rank {}", l.rank));
    }
    check_vec(layer, "kernel_size", &l.kernel, l.rank)?;
    check_vec(layer, "strides", &l.strides, l.rank)?;
    check_vec(layer, "dilation_rate", &l.dilation, l.rank)?;
    if l.filters == 0 {
        return err(layer, "filters must be >= 1");
    }
    if l.padding == Padding::Causal {
        return err(
            layer,
            "padding 'causal' is not supported by locally connected layers",
        );
    }
    let (in_sp, c) = split_channels(layer, x, l.rank, l.data_format)?;
    let out_sp = spatial_out(layer, &in_sp, &l.kernel, &l.strides, &l.dilation, l.padding)?;
    let p = mul(layer, &out_sp)?;
    let q = mul(layer, &[mul(layer, &l.kernel)?, c])?;
    let shape = join_channels(&out_sp, l.filters, l.data_format);
    let mut params = vec![spec(
        "kernel",
        vec![p, q, l.filters],
        lc_keras_kernel_shape(layer, l, &in_sp, c, &out_sp)?,
        true,
        l.kernel_initializer.clone(),
        l.options.kernel_regularizer,
        l.options.kernel_constraint.clone(),
    )];
    if l.use_bias {
        let mut keras_bias = out_sp.clone();
        keras_bias.push(l.filters);
        params.push(spec(
            "bias",
            shape.clone(),
            keras_bias,
            true,
            l.bias_initializer.clone(),
            l.options.bias_regularizer,
            l.options.bias_constraint.clone(),
        ));
    }
    Ok(Inferred { shape, params })
}

fn conv(layer: &str, cv: &Conv, x: &[usize]) -> Result<Inferred> {
    if !(1..=2).contains(&cv.rank) {
        return err(layer, format!("unsupported spatial rank {}", cv.rank));
    }
    check_vec(layer, "kernel_size", &cv.kernel, cv.rank)?;
    check_vec(layer, "strides", &cv.strides, cv.rank)?;
    check_vec(layer, "dilation_rate", &cv.dilation, cv.rank)?;
    if cv.filters == 0 || cv.groups == 0 {
        return err(layer, "filters and groups must be >= 1");
    }
    if cv.padding == Padding::Causal && cv.rank != 1 {
        return err(layer, "padding 'causal' is only valid for Conv1D");
    }
    let (in_sp, c) = split_channels(layer, x, cv.rank, cv.data_format)?;
    if c % cv.groups != 0 || !cv.filters.is_multiple_of(cv.groups) {
        return err(
            layer,
            format!(
                "groups {} must divide input channels {c} and filters {}",
                cv.groups, cv.filters
            ),
        );
    }
    let out_sp = spatial_out(
        layer,
        &in_sp,
        &cv.kernel,
        &cv.strides,
        &cv.dilation,
        cv.padding,
    )?;
    let shape = join_channels(&out_sp, cv.filters, cv.data_format);
    let mut ks = cv.kernel.clone();
    ks.push(c / cv.groups);
    ks.push(cv.filters);
    mul(layer, &ks)?;
    let mut params = vec![spec(
        "kernel",
        ks.clone(),
        ks,
        true,
        cv.kernel_initializer.clone(),
        cv.options.kernel_regularizer,
        cv.options.kernel_constraint.clone(),
    )];
    if cv.use_bias {
        params.push(spec(
            "bias",
            vec![cv.filters],
            vec![cv.filters],
            true,
            cv.bias_initializer.clone(),
            cv.options.bias_regularizer,
            cv.options.bias_constraint.clone(),
        ));
    }
    Ok(Inferred { shape, params })
}

fn resolve_axis(layer: &str, axis: i64, rank: usize) -> Result<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r {
        return err(
            layer,
            format!("axis {axis} is out of range for a per-sample rank of {rank}"),
        );
    }
    Ok(a as usize)
}

/// Infers the output shape and parameters of `op` applied to inputs of `inputs` shapes.
pub fn infer(layer: &str, op: &Op, inputs: &[Vec<usize>]) -> Result<Inferred> {
    let inferred = infer_op(layer, op, inputs)?;
    // A softmax fused into a layer is checked against the layer's output, as a
    // standalone Softmax is against its input (the engines assume a valid axis).
    let fused = match op {
        Op::LocallyConnected(l) => Some(&l.activation),
        Op::Dense(d) => Some(&d.activation),
        Op::Conv(c) => Some(&c.activation),
        _ => None,
    };
    if let Some(Activation::Softmax { axis }) = fused {
        resolve_axis(layer, *axis, inferred.shape.len())?;
    }
    Ok(inferred)
}

/// [`infer`] without the fused-activation check.
fn infer_op(layer: &str, op: &Op, inputs: &[Vec<usize>]) -> Result<Inferred> {
    let plain = |shape: Vec<usize>| -> Result<Inferred> {
        if shape.contains(&0) {
            return err(
                layer,
                format!("output shape {shape:?} has a zero dimension"),
            );
        }
        Ok(Inferred {
            shape,
            params: Vec::new(),
        })
    };
    match op {
        Op::Input => err(layer, "an input layer has no inputs to infer from"),
        Op::LocallyConnected(l) => lc(layer, l, one_input(layer, inputs)?),
        Op::Conv(c) => conv(layer, c, one_input(layer, inputs)?),
        Op::Dense(d) => {
            let x = one_input(layer, inputs)?;
            if d.units == 0 {
                return err(layer, "units must be >= 1");
            }
            let Some((&n, rest)) = x.split_last() else {
                return err(layer, "Dense needs an input of rank >= 1");
            };
            let mut shape = rest.to_vec();
            shape.push(d.units);
            mul(layer, &[n, d.units])?;
            let mut params = vec![spec(
                "kernel",
                vec![n, d.units],
                vec![n, d.units],
                true,
                d.kernel_initializer.clone(),
                d.options.kernel_regularizer,
                d.options.kernel_constraint.clone(),
            )];
            if d.use_bias {
                params.push(spec(
                    "bias",
                    vec![d.units],
                    vec![d.units],
                    true,
                    d.bias_initializer.clone(),
                    d.options.bias_regularizer,
                    d.options.bias_constraint.clone(),
                ));
            }
            Ok(Inferred { shape, params })
        }
        Op::Pool(p) => {
            let x = one_input(layer, inputs)?;
            check_vec(layer, "pool_size", &p.pool, p.rank)?;
            check_vec(layer, "strides", &p.strides, p.rank)?;
            if p.padding == Padding::Causal {
                return err(layer, "padding 'causal' is not valid for pooling");
            }
            let (sp, c) = split_channels(layer, x, p.rank, p.data_format)?;
            let ones = vec![1; p.rank];
            let out = spatial_out(layer, &sp, &p.pool, &p.strides, &ones, p.padding)?;
            plain(join_channels(&out, c, p.data_format))
        }
        Op::GlobalPool {
            rank,
            data_format,
            keepdims,
            ..
        } => {
            let x = one_input(layer, inputs)?;
            let (_, c) = split_channels(layer, x, *rank, *data_format)?;
            if *keepdims {
                plain(join_channels(&vec![1; *rank], c, *data_format))
            } else {
                plain(vec![c])
            }
        }
        Op::ZeroPadding {
            rank,
            pads,
            data_format,
        } => {
            let x = one_input(layer, inputs)?;
            if pads.len() != *rank {
                return err(layer, "padding has the wrong number of axes");
            }
            let (sp, c) = split_channels(layer, x, *rank, *data_format)?;
            let mut out = Vec::new();
            for (n, (a, b)) in sp.iter().zip(pads) {
                out.push(
                    n.checked_add(*a)
                        .and_then(|v| v.checked_add(*b))
                        .ok_or_else(|| Error::shape(layer, "padded size overflows"))?,
                );
            }
            plain(join_channels(&out, c, *data_format))
        }
        Op::Cropping {
            rank,
            crops,
            data_format,
        } => {
            let x = one_input(layer, inputs)?;
            if crops.len() != *rank {
                return err(layer, "cropping has the wrong number of axes");
            }
            let (sp, c) = split_channels(layer, x, *rank, *data_format)?;
            let mut out = Vec::new();
            for (a, (n, (b, e))) in sp.iter().zip(crops).enumerate() {
                match b.checked_add(*e) {
                    Some(t) if t < *n => out.push(n - t),
                    _ => {
                        return err(
                            layer,
                            format!(
                                "cropping ({b}, {e}) removes all of spatial axis {a} (size {n})"
                            ),
                        )
                    }
                }
            }
            plain(join_channels(&out, c, *data_format))
        }
        Op::Flatten { .. } => {
            let x = one_input(layer, inputs)?;
            plain(vec![mul(layer, x)?])
        }
        Op::Reshape { target } => {
            let x = one_input(layer, inputs)?;
            let n = mul(layer, x)?;
            let unknown = target.iter().filter(|&&t| t == -1).count();
            if unknown > 1 || target.iter().any(|&t| t == 0 || t < -1) {
                return err(layer, format!("invalid target_shape {target:?}"));
            }
            let known: usize = mul(
                layer,
                &target
                    .iter()
                    .filter(|&&t| t > 0)
                    .map(|&t| t as usize)
                    .collect::<Vec<_>>(),
            )?;
            let shape: Vec<usize> = if unknown == 1 {
                if known == 0 || n % known != 0 {
                    return err(layer, format!("cannot reshape {x:?} to {target:?}"));
                }
                target
                    .iter()
                    .map(|&t| if t == -1 { n / known } else { t as usize })
                    .collect()
            } else {
                if known != n {
                    return err(
                        layer,
                        format!(
                            "cannot reshape {x:?} ({n} elements) to {target:?} ({known} elements)"
                        ),
                    );
                }
                target.iter().map(|&t| t as usize).collect()
            };
            plain(shape)
        }
        Op::Permute { dims } => {
            let x = one_input(layer, inputs)?;
            let mut seen = vec![false; x.len()];
            if dims.len() != x.len() {
                return err(
                    layer,
                    format!("dims {dims:?} do not match input rank {}", x.len()),
                );
            }
            for &d in dims {
                if d == 0 || d > x.len() || seen[d - 1] {
                    return err(
                        layer,
                        format!("dims {dims:?} is not a permutation of 1..={}", x.len()),
                    );
                }
                seen[d - 1] = true;
            }
            plain(dims.iter().map(|&d| x[d - 1]).collect())
        }
        Op::Dropout { rate, spatial, .. } => {
            let x = one_input(layer, inputs)?;
            if !(0.0..1.0).contains(rate) {
                return err(layer, format!("rate {rate} must be in [0, 1)"));
            }
            if let Some(r) = spatial {
                if x.len() != r + 1 {
                    return err(
                        layer,
                        format!("SpatialDropout{r}D expects a per-sample rank of {}", r + 1),
                    );
                }
            }
            plain(x.to_vec())
        }
        Op::BatchNorm(bn) => {
            let x = one_input(layer, inputs)?;
            if bn.axis >= x.len() {
                return err(
                    layer,
                    format!("axis {} out of range for shape {x:?}", bn.axis),
                );
            }
            let c = x[bn.axis];
            let names = ["gamma", "beta", "moving_mean", "moving_variance"];
            let present = [bn.scale, bn.center, true, true];
            let mut params = Vec::new();
            for i in 0..4 {
                if present[i] {
                    let (reg, con) = match i {
                        0 => (
                            bn.options.kernel_regularizer,
                            bn.options.kernel_constraint.clone(),
                        ),
                        1 => (
                            bn.options.bias_regularizer,
                            bn.options.bias_constraint.clone(),
                        ),
                        _ => (None, None),
                    };
                    params.push(spec(
                        names[i],
                        vec![c],
                        vec![c],
                        i < 2,
                        bn.initializers[i].clone(),
                        reg,
                        con,
                    ));
                }
            }
            Ok(Inferred {
                shape: x.to_vec(),
                params,
            })
        }
        Op::Activation(a) => {
            let x = one_input(layer, inputs)?;
            if let Activation::Softmax { axis } = a {
                resolve_axis(layer, *axis, x.len())?;
            }
            plain(x.to_vec())
        }
        Op::Merge(kind) => {
            if inputs.len() < 2 || (*kind == MergeKind::Subtract && inputs.len() != 2) {
                return err(
                    layer,
                    format!(
                        "{kind:?} needs {} inputs, got {}",
                        if *kind == MergeKind::Subtract {
                            "exactly 2"
                        } else {
                            "at least 2"
                        },
                        inputs.len()
                    ),
                );
            }
            for s in &inputs[1..] {
                if *s != inputs[0] {
                    return err(
                        layer,
                        format!("inputs have different shapes {:?} and {s:?}", inputs[0]),
                    );
                }
            }
            plain(inputs[0].clone())
        }
        Op::Concatenate { axis } => {
            if inputs.len() < 2 {
                return err(
                    layer,
                    format!("Concatenate needs at least 2 inputs, got {}", inputs.len()),
                );
            }
            let r = inputs[0].len();
            if *axis >= r {
                return err(layer, format!("axis {axis} out of range for rank {r}"));
            }
            let mut out = inputs[0].clone();
            for s in &inputs[1..] {
                let compatible = s.len() == r && (0..r).all(|a| a == *axis || s[a] == inputs[0][a]);
                if !compatible {
                    return err(
                        layer,
                        format!(
                            "cannot concatenate {:?} and {s:?} along axis {axis}",
                            inputs[0]
                        ),
                    );
                }
                out[*axis] = out[*axis]
                    .checked_add(s[*axis])
                    .ok_or_else(|| Error::shape(layer, "size overflows"))?;
            }
            plain(out)
        }
    }
}

/// Resolves a Keras axis (negative from the end, batch axis counted as 0 when
/// `includes_batch`) to a per-sample axis index.
pub fn resolve_keras_axis(
    layer: &str,
    axis: i64,
    rank: usize,
    includes_batch: bool,
) -> Result<usize> {
    if axis < 0 {
        resolve_axis(layer, axis, rank)
    } else if includes_batch {
        if axis == 0 {
            return err(layer, "axis 0 is the batch axis");
        }
        // Report the axis as written (it counts the batch axis), not the per-sample index.
        if axis > rank as i64 {
            return err(
                layer,
                format!(
                    "axis {axis} is out of range for a tensor of rank {} (batch axis included)",
                    rank + 1
                ),
            );
        }
        resolve_axis(layer, axis - 1, rank)
    } else {
        resolve_axis(layer, axis, rank)
    }
}
