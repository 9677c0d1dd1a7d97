//! 16-bit weight storage, an inference speed option ([`crate::CompileOptions`]'s
//! `weights_dtype`, `--weights-dtype bf16|f16`): the kernels of locally connected and
//! Dense layers, which batch-1 inference streams from memory once per call, are stored in
//! bfloat16 or IEEE half precision and widened to f32 in registers as they are loaded, so
//! half the bytes cross the memory bus. Everything else (biases, other layers, every
//! activation and every operation) stays f32.
//!
//! Invariants: [`stored_16bit`] is the one decision of which parameters are narrowed; the
//! lowering pass [`store_weights`] marks exactly those parameter buffers, and the runtime
//! binds exactly those as 16-bit data ([`narrow`]). The model the 16-bit program computes
//! is the float32 model with those weights rounded to nearest even ([`round`]): that is
//! what the reference engine runs under this option, so all engines still compute one
//! model (the JIT bit for bit with the interpreter).

use ndarray::ArrayD;

use super::Lowered;
use crate::graph::{Graph, Op, ParamId};
use crate::loop_ir::{math, BufRole, Dtype};

/// Whether parameter `p` of `graph` is stored in 16 bits under a 16-bit weights option:
/// the `kernel` of a locally connected or Dense layer.
pub fn stored_16bit(graph: &Graph, p: ParamId) -> bool {
    let Some(spec) = graph.params.get(p) else {
        return false;
    };
    let streamed = graph
        .nodes
        .get(spec.node)
        .is_some_and(|n| matches!(n.op, Op::LocallyConnected(_) | Op::Dense(_)));
    streamed && spec.name == "kernel"
}

/// Marks the buffers of `graph`'s 16-bit parameters in `lowered` as stored in `dtype`
/// (nothing for [`Dtype::F32`]). A pass over a lowered forward program: parameter
/// buffers are read-only, so no kernel changes; every load of them widens.
pub fn store_weights(lowered: &mut Lowered, graph: &Graph, dtype: Dtype) {
    if dtype == Dtype::F32 {
        return;
    }
    for buf in &mut lowered.module.buffers {
        if let BufRole::Param(p) = buf.role {
            if stored_16bit(graph, p) {
                buf.dtype = dtype;
            }
        }
    }
}

/// `values` stored in `dtype` (16-bit), each rounded to nearest even.
pub fn narrow(values: impl Iterator<Item = f32>, dtype: Dtype) -> Vec<u16> {
    match dtype {
        Dtype::Bf16 => values.map(math::narrow_bf16).collect(),
        Dtype::F16 | Dtype::F32 => values.map(math::narrow_f16).collect(),
    }
}

/// `a` rounded to `dtype` and widened back: the values a 16-bit program computes with.
pub fn round(a: &ArrayD<f32>, dtype: Dtype) -> ArrayD<f32> {
    match dtype {
        Dtype::F32 => a.clone(),
        Dtype::Bf16 => a.mapv(math::round_bf16),
        Dtype::F16 => a.mapv(math::round_f16),
    }
}

/// `params` (one per parameter of `graph`) with the 16-bit ones rounded to `dtype`: the
/// model a 16-bit program computes, for the reference engine.
pub fn rounded_params(graph: &Graph, params: &[ArrayD<f32>], dtype: Dtype) -> Vec<ArrayD<f32>> {
    params
        .iter()
        .enumerate()
        .map(|(p, a)| {
            if stored_16bit(graph, p) {
                round(a, dtype)
            } else {
                a.clone()
            }
        })
        .collect()
}

/// Bytes of the 16-bit copies of `graph`'s streamed weights (what the runtime holds
/// beside the f32 model under the option), for the memory budget.
pub fn narrowed_bytes(graph: &Graph) -> u128 {
    (0..graph.params.len())
        .filter(|&p| stored_16bit(graph, p))
        .map(|p| 2 * graph.params[p].len() as u128)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrowing_agrees_with_rounding() {
        let xs = [0.1f32, -3.75e-6, 1e5, 65519.0, f32::MIN_POSITIVE, -0.0];
        for dtype in [Dtype::Bf16, Dtype::F16] {
            let a = ArrayD::from_shape_vec(ndarray::IxDyn(&[xs.len()]), xs.to_vec())
                .unwrap_or_else(|e| panic!("{e}"));
            let r = round(&a, dtype);
            let n = narrow(xs.iter().copied(), dtype);
            for (h, want) in n.iter().zip(r.iter()) {
                assert_eq!(dtype.widen(*h).to_bits(), want.to_bits(), "{dtype:?}");
            }
        }
    }
}
