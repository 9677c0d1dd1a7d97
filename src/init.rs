//! Weight initialization from each layer's Keras initializer, with a seeded,
//! deterministic generator, so that a configuration without weights runs.
//!
//! Fans follow tf-keras's `_compute_fans` on the weight's *file* shape (keras-lc-semantics
//! §8.1): for an implementation-1 LC kernel `(P, Q, F)` that gives `fan_in = P·Q` and
//! `fan_out = P·F`, as Keras 2 does; models read from a Keras 1 configuration use Keras
//! 1's rule instead ([`fans_keras1`]: `sqrt(P·Q·F)` for both). Values are drawn in
//! canonical layout, except for implementation-2 LC kernels: as Keras does, the whole dense
//! Keras tensor is drawn (fans of that shape, §8.1 table) and split into the canonical
//! kernel and the entries outside the connectivity mask ([`initialize_keras`]), which
//! Keras keeps, saves, regularizes and constrains. Each parameter
//! gets its own stream derived from `(seed, parameter index)`, so results do not depend on
//! the order in which parameters are initialized. Random streams are not Keras's (no two
//! frameworks share them); distributions, limits and fans are.

mod jump;

use crate::error::{Error, Result};
use crate::graph::{layout, Distribution, FanMode, Graph, Initializer, ParamSpec};
use ndarray::ArrayD;

/// xoshiro256** (Blackman & Vigna): small, fast, statistically strong, fully
/// reproducible across platforms.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A generator seeded through splitmix64.
    pub fn new(seed: u64) -> Self {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^ (x >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    /// The generator's whole state: with [`Rng::from_state`] a stream continues exactly
    /// where it was (a resumed `fit` draws the Dropout masks the uninterrupted one would).
    pub fn state(&self) -> [u64; 4] {
        self.s
    }

    /// A generator continuing the stream whose [`Rng::state`] was `s`.
    pub fn from_state(s: [u64; 4]) -> Self {
        Rng { s }
    }

    /// The generator `k` draws further on, without drawing them (see [`jump`]).
    pub fn jumped(&self, k: u64) -> Rng {
        Rng {
            s: jump::jump(self.s, k),
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform on `[0, 1)` with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal (Box–Muller; one value per call keeps the stream simple).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // (0, 1]: ln is finite
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Standard normal redrawn outside `[-2, 2]`.
    pub fn truncated_normal(&mut self) -> f64 {
        loop {
            let v = self.normal();
            if v.abs() <= 2.0 {
                return v;
            }
        }
    }
}

/// `(fan_in, fan_out)` of a weight of `shape`, as tf-keras computes them.
pub fn fans(shape: &[usize]) -> (f64, f64) {
    match shape.len() {
        0 => (1.0, 1.0),
        1 => (shape[0] as f64, shape[0] as f64),
        2 => (shape[0] as f64, shape[1] as f64),
        n => {
            let r: f64 = shape[..n - 2].iter().map(|&d| d as f64).product();
            (shape[n - 2] as f64 * r, shape[n - 1] as f64 * r)
        }
    }
}

/// `(fan_in, fan_out)` as Keras 1's `initializations.get_fans` computes them: rank 2 and
/// the rank-4/5 convolution kernels as tf-keras (in the channels_last layout the graph
/// stores), anything else — notably the rank-3 LC kernel `(P, Q, F)` — gets
/// `fan_in = fan_out = sqrt(Π shape)` (keras-lc-semantics §8.1).
pub fn fans_keras1(shape: &[usize]) -> (f64, f64) {
    match shape.len() {
        2 | 4 | 5 => fans(shape),
        _ => {
            let n: f64 = shape.iter().map(|&d| d as f64).product();
            (n.sqrt(), n.sqrt())
        }
    }
}

/// Draws initial values for one parameter (tf-keras fans).
pub fn init_param(spec: &ParamSpec, layer: &str, rng: &mut Rng) -> Result<ArrayD<f32>> {
    init_param_with(spec, layer, rng, fans)
}

/// Draws initial values for one parameter, with the fan rule of a Keras version.
pub fn init_param_with(
    spec: &ParamSpec,
    layer: &str,
    rng: &mut Rng,
    fan_rule: fn(&[usize]) -> (f64, f64),
) -> Result<ArrayD<f32>> {
    let n = spec.len();
    let mut v = Vec::with_capacity(n);
    match &spec.initializer {
        Initializer::Zeros => v.resize(n, 0.0),
        Initializer::Ones => v.resize(n, 1.0),
        Initializer::Constant(c) => v.resize(n, *c),
        Initializer::RandomNormal { mean, stddev } => {
            v.extend((0..n).map(|_| (*mean as f64 + *stddev as f64 * rng.normal()) as f32))
        }
        Initializer::TruncatedNormal { mean, stddev } => v.extend(
            (0..n).map(|_| (*mean as f64 + *stddev as f64 * rng.truncated_normal()) as f32),
        ),
        Initializer::RandomUniform { minval, maxval } => {
            v.extend((0..n).map(|_| {
                (*minval as f64 + (*maxval as f64 - *minval as f64) * rng.uniform()) as f32
            }))
        }
        Initializer::VarianceScaling {
            scale,
            mode,
            distribution,
        } => {
            let (fi, fo) = fan_rule(&spec.keras_shape);
            let denom = match mode {
                FanMode::FanIn => fi,
                FanMode::FanOut => fo,
                FanMode::FanAvg => (fi + fo) / 2.0,
            }
            .max(1.0);
            let s = *scale as f64 / denom;
            match distribution {
                Distribution::Uniform => {
                    let limit = (3.0 * s).sqrt();
                    v.extend((0..n).map(|_| (limit * (2.0 * rng.uniform() - 1.0)) as f32))
                }
                Distribution::TruncatedNormal => {
                    let sd = s.sqrt() / 0.879_625_661_034_239_8;
                    v.extend((0..n).map(|_| (sd * rng.truncated_normal()) as f32))
                }
                Distribution::TruncatedNormalUncorrected => {
                    let sd = s.sqrt();
                    v.extend((0..n).map(|_| (sd * rng.truncated_normal()) as f32))
                }
                Distribution::UntruncatedNormal => {
                    let sd = s.sqrt();
                    v.extend((0..n).map(|_| (sd * rng.normal()) as f32))
                }
            }
        }
        Initializer::Orthogonal { gain } => v = orthogonal(spec, layer, *gain, rng)?,
        Initializer::Identity { gain } => {
            let [r, c] = spec.shape[..] else {
                return Err(init_error(spec, layer, "Identity needs a 2-D weight"));
            };
            v.resize(n, 0.0);
            for i in 0..r.min(c) {
                v[i * c + i] = *gain;
            }
        }
    }
    ArrayD::from_shape_vec(spec.shape.clone(), v)
        .map_err(|e| Error::internal(format!("init of {layer}/{}: {e}", spec.name)))
}

fn init_error(spec: &ParamSpec, layer: &str, detail: &str) -> Error {
    Error::Weights {
        source_name: "initializer".into(),
        layer: layer.to_string(),
        weight: spec.name.clone(),
        detail: detail.to_string(),
    }
}

/// Most multiply-adds [`orthogonal`] may spend (`short² · long`): a 2048×2048 kernel.
pub const ORTHOGONAL_WORK: u128 = 1 << 33;

/// Orthogonal initializer: QR (modified Gram–Schmidt) of a normal `(rows, cols)` matrix
/// with rows = prod(shape[..-1]), sign-corrected, times `gain`.
fn orthogonal(spec: &ParamSpec, layer: &str, gain: f32, rng: &mut Rng) -> Result<Vec<f32>> {
    let shape = &spec.shape;
    if shape.len() < 2 {
        return Err(init_error(
            spec,
            layer,
            "Orthogonal needs a weight of rank >= 2",
        ));
    }
    let cols = shape[shape.len() - 1];
    let rows: usize = shape[..shape.len() - 1].iter().product();
    if rows.saturating_mul(cols) > 1 << 26 {
        return Err(init_error(
            spec,
            layer,
            "Orthogonal initializer on a weight this large is not supported",
        ));
    }
    // Orthonormalize the shorter dimension's vectors of length `long`: `short²·long`
    // multiply-adds. Beyond ORTHOGONAL_WORK (a 2048×2048 kernel, seconds) the cubic cost
    // would look like a hang, so such a weight must come from a weights file.
    let (long, short) = (rows.max(cols), rows.min(cols));
    if (short as u128) * (short as u128) * (long as u128) > ORTHOGONAL_WORK {
        return Err(init_error(
            spec,
            layer,
            &format!(
                "Orthogonal initializer on a {rows}×{cols} weight would take {} multiply-adds \
                 (at most {ORTHOGONAL_WORK}); give the weights in a file",
                (short as u128) * (short as u128) * (long as u128)
            ),
        ));
    }
    let mut q: Vec<Vec<f64>> = (0..short)
        .map(|_| (0..long).map(|_| rng.normal()).collect())
        .collect();
    for i in 0..short {
        let (done, rest) = q.split_at_mut(i);
        let qi = &mut rest[0];
        for qj in done.iter() {
            let d: f64 = qi.iter().zip(qj).map(|(a, b)| a * b).sum();
            for (a, b) in qi.iter_mut().zip(qj) {
                *a -= d * b;
            }
        }
        let norm = qi.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-300);
        for a in qi.iter_mut() {
            *a /= norm;
        }
    }
    let mut out = vec![0f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            let val = if rows >= cols { q[c][r] } else { q[r][c] };
            out[r * cols + c] = (gain as f64 * val) as f32;
        }
    }
    Ok(out)
}

/// Initializes every parameter of `graph` with stream `(seed, index)`.
pub fn initialize(graph: &Graph, seed: u64) -> Result<Vec<ArrayD<f32>>> {
    initialize_with(graph, seed, fans)
}

/// [`initialize`] with the fan rule of a Keras version ([`fans`] or [`fans_keras1`]).
pub fn initialize_with(
    graph: &Graph,
    seed: u64,
    fan_rule: fn(&[usize]) -> (f64, f64),
) -> Result<Vec<ArrayD<f32>>> {
    Ok(initialize_keras(graph, seed, fan_rule)?.0)
}

/// Canonical weights and, parallel to them, the off-mask entries of every
/// implementation-2 LC kernel (`Some`, row-major order of the Keras tensor; `None` for
/// every other parameter), drawn as [`initialize_with`] draws them.
pub type InitialWeights = (Vec<ArrayD<f32>>, Vec<Option<Vec<f32>>>);

/// Initializes every parameter of `graph` with stream `(seed, index)`; an
/// implementation-2 LC kernel is drawn as Keras draws it, over its whole Keras-layout
/// tensor, then split into canonical kernel and off-mask entries.
pub fn initialize_keras(
    graph: &Graph,
    seed: u64,
    fan_rule: fn(&[usize]) -> (f64, f64),
) -> Result<InitialWeights> {
    let mut params = Vec::with_capacity(graph.params.len());
    let mut off_mask = Vec::with_capacity(graph.params.len());
    for (i, spec) in graph.params.iter().enumerate() {
        let mut rng = Rng::new(seed ^ (i as u64).wrapping_mul(0xA076_1D64_78BD_642F));
        let layer = graph
            .nodes
            .get(spec.node)
            .map(|n| n.name.as_str())
            .unwrap_or("?");
        let internal = |d: String| Error::internal(format!("init of {layer}/{}: {d}", spec.name));
        if layout::off_mask_len(graph, i).map_err(internal)?.is_none() {
            params.push(init_param_with(spec, layer, &mut rng, fan_rule)?);
            off_mask.push(None);
            continue;
        }
        let full = ParamSpec {
            shape: spec.keras_shape.clone(),
            ..spec.clone()
        };
        let keras = init_param_with(&full, layer, &mut rng, fan_rule)?;
        let (canonical, off) =
            layout::keras_to_canonical_split(graph, i, keras).map_err(internal)?;
        params.push(canonical);
        off_mask.push(off);
    }
    Ok((params, off_mask))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lc_kernel_fans_follow_tf_keras() {
        // keras-lc-semantics §8.1 worked example: (38, 21, 5) → fan_in 798, fan_out 190.
        assert_eq!(fans(&[38, 21, 5]), (798.0, 190.0));
        assert_eq!(fans(&[7]), (7.0, 7.0));
        assert_eq!(fans(&[3, 4]), (3.0, 4.0));
    }

    #[test]
    fn keras1_fans_use_the_square_root_rule_for_lc_kernels() {
        // keras-lc-semantics §8.1: rank-3 kernels get sqrt(P·Q·F) for both fans.
        let (fi, fo) = fans_keras1(&[38, 21, 5]);
        assert!((fi - (3990f64).sqrt()).abs() < 1e-12 && fi == fo);
        assert_eq!(fans_keras1(&[3, 4]), (3.0, 4.0));
        assert_eq!(fans_keras1(&[3, 3, 2, 8]), fans(&[3, 3, 2, 8]));
    }

    #[test]
    fn glorot_uniform_respects_its_limit_and_is_deterministic() {
        let spec = ParamSpec {
            node: 0,
            name: "kernel".into(),
            shape: vec![38, 21, 5],
            keras_shape: vec![38, 21, 5],
            trainable: true,
            initializer: Initializer::VarianceScaling {
                scale: 1.0,
                mode: FanMode::FanAvg,
                distribution: Distribution::Uniform,
            },
            regularizer: None,
            constraint: None,
        };
        let a = init_param(&spec, "lc", &mut Rng::new(1)).unwrap();
        let b = init_param(&spec, "lc", &mut Rng::new(1)).unwrap();
        assert_eq!(a, b);
        let max = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(max <= 0.07793 && max > 0.07, "max {max}");
    }

    #[test]
    fn orthogonal_columns_are_orthonormal() {
        let spec = ParamSpec {
            node: 0,
            name: "kernel".into(),
            shape: vec![6, 3],
            keras_shape: vec![6, 3],
            trainable: true,
            initializer: Initializer::Orthogonal { gain: 1.0 },
            regularizer: None,
            constraint: None,
        };
        let w = init_param(&spec, "d", &mut Rng::new(3)).unwrap();
        for i in 0..3 {
            for j in 0..3 {
                let d: f32 = (0..6).map(|r| w[[r, i]] * w[[r, j]]).sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((d - want).abs() < 1e-5);
            }
        }
    }
}
