//! Kernel layouts of locally connected layers: conversion between Keras implementations
//! 1, 2 and 3 (keras-lc-semantics §2) and lcjit's canonical `(P, Q, F)` kernel.
//!
//! Everything works on flat row-major slices with index arithmetic; spatial rank 1 and 2
//! are handled as rank 3 with leading axes of size 1 (which leaves every row-major flat
//! index unchanged). Conversion cost is linear in the number of connected weights.
//!
//! Index conventions (`N = prod(in spatial)`, `P = prod(out spatial)`, `K = prod(kernel)`,
//! `Q = K·C`, `tk` = row-major tap index in the kernel window, `ip` = row-major input
//! position, `p` = row-major output position):
//! - canonical: `(p·Q + q)·F + f` with `q = tk·C + c` (channels_last) or `q = c·K + tk`
//!   (channels_first);
//! - implementation 2: `((ip·C + c)·P + p)·F + f` (channels_last, shape
//!   `(in…, C, out…, F)`), `((c·N + ip)·F + f)·P + p` (channels_first, shape
//!   `(C, in…, F, out…)`);
//! - implementation 3: rows in ascending `out_idx` (`p·F + f` channels_last, `f·P + p`
//!   channels_first), within a row ascending `in_idx` (`ip·C + c` / `c·N + ip`). Tap
//!   positions grow with the tap index along every axis (dilation included), so ascending
//!   `in_idx` within a window is ascending `q` among the in-range taps.
//!
//! A tap of output `o` along an axis sits at `lc_window_start(o) + t·d`; it exists only if
//! that lies in `[0, n)` (keras-lc-semantics §3.4; always true for `valid`).

use super::geometry::{lc_window_start, output_len};
use super::ops::{DataFormat, LocallyConnected, Padding};

mod off_mask;

/// The weight geometry of one locally connected layer, resolved from its op and its
/// per-sample input shape.
#[derive(Clone, Debug)]
pub struct LcGeometry {
    rank: usize,
    /// Input spatial sizes, padded to 3 axes with leading 1s.
    n: [usize; 3],
    /// Kernel sizes, padded likewise.
    k: [usize; 3],
    /// Output spatial sizes, padded likewise.
    out: [usize; 3],
    /// Per axis, at `o·k + t`: the input index of tap `t` of output `o`, if in range.
    tap_pos: [Vec<Option<usize>>; 3],
    c: usize,
    f: usize,
    data_format: DataFormat,
    implementation: u8,
}

/// The in-range taps of every output position: for position `p`, the entries
/// `taps[start[p]..start[p + 1]]` are `(tk, ip)` pairs in ascending `tk` (and `ip`).
struct Windows {
    start: Vec<usize>,
    taps: Vec<(usize, usize)>,
}

fn checked_product(xs: &[usize]) -> Result<usize, String> {
    crate::size::elems(xs).map_err(|_| format!("size {xs:?} overflows"))
}

impl LcGeometry {
    /// Resolves the geometry of `lc` applied to a per-sample input of shape `input`
    /// (spatial sizes and channels in `lc.data_format` order). Errors describe an
    /// inconsistent layer (wrong rank, zero sizes, empty output, unknown implementation).
    pub fn new(lc: &LocallyConnected, input: &[usize]) -> Result<Self, String> {
        let rank = lc.rank;
        if !(1..=3).contains(&rank) {
            return Err(format!("unsupported spatial rank {rank}"));
        }
        for (name, v) in [
            ("kernel_size", &lc.kernel),
            ("strides", &lc.strides),
            ("dilation_rate", &lc.dilation),
        ] {
            if v.len() != rank || v.contains(&0) {
                return Err(format!("{name} {v:?} must have {rank} entries, all >= 1"));
            }
        }
        if lc.filters == 0 {
            return Err("filters must be >= 1".into());
        }
        if lc.padding == Padding::Causal {
            return Err("padding 'causal' is not supported by locally connected layers".into());
        }
        if !(1..=3).contains(&lc.implementation) {
            return Err(format!("unknown implementation {}", lc.implementation));
        }
        if input.len() != rank + 1 || input.contains(&0) {
            return Err(format!(
                "input shape {input:?} is not a non-empty shape of spatial rank {rank} plus channels"
            ));
        }
        let (spatial, c) = match lc.data_format {
            DataFormat::ChannelsLast => (&input[..rank], input[rank]),
            DataFormat::ChannelsFirst => (&input[1..], input[0]),
        };
        let mut g = LcGeometry {
            rank,
            n: [1; 3],
            k: [1; 3],
            out: [1; 3],
            tap_pos: [vec![Some(0)], vec![Some(0)], vec![Some(0)]],
            c,
            f: lc.filters,
            data_format: lc.data_format,
            implementation: lc.implementation,
        };
        for (a, &n) in spatial.iter().enumerate() {
            let ax = 3 - rank + a;
            let (k, s, d) = (lc.kernel[a], lc.strides[a], lc.dilation[a]);
            let out = output_len(n, k, s, d, lc.padding).ok_or_else(|| {
                format!("empty output along spatial axis {a}: input {n}, kernel {k}, stride {s}, dilation {d}")
            })?;
            let mut pos = Vec::with_capacity(checked_product(&[out, k])?);
            for o in 0..out {
                let start = lc_window_start(o, k, s, d, lc.padding);
                for t in 0..k {
                    let i = i128::from(start) + (t as i128) * (d as i128);
                    pos.push(if i >= 0 && i < n as i128 {
                        Some(i as usize)
                    } else {
                        None
                    });
                }
            }
            g.n[ax] = n;
            g.k[ax] = k;
            g.out[ax] = out;
            g.tap_pos[ax] = pos;
        }
        // Every size used below must fit in usize.
        g.keras_kernel_shape()?;
        checked_product(&[g.positions(), g.patch_len(), g.f])?;
        Ok(g)
    }

    /// Spatial rank (1, 2 or 3).
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Input spatial sizes.
    pub fn in_spatial(&self) -> &[usize] {
        &self.n[3 - self.rank..]
    }

    /// Output spatial sizes.
    pub fn out_spatial(&self) -> &[usize] {
        &self.out[3 - self.rank..]
    }

    /// Keras `implementation` (1, 2 or 3) of the file layout.
    pub fn implementation(&self) -> u8 {
        self.implementation
    }

    /// Input channels `C`.
    pub fn channels(&self) -> usize {
        self.c
    }

    /// Filters `F`.
    pub fn filters(&self) -> usize {
        self.f
    }

    /// Output positions `P = prod(out spatial)`.
    pub fn positions(&self) -> usize {
        self.out.iter().product()
    }

    /// Input positions `N = prod(in spatial)`.
    pub fn input_positions(&self) -> usize {
        self.n.iter().product()
    }

    /// Taps per window `K = prod(kernel)`.
    pub fn taps(&self) -> usize {
        self.k.iter().product()
    }

    /// Patch length `Q = K·C`.
    pub fn patch_len(&self) -> usize {
        self.taps() * self.c
    }

    /// The canonical kernel shape `(P, Q, F)`.
    pub fn canonical_kernel_shape(&self) -> Vec<usize> {
        vec![self.positions(), self.patch_len(), self.f]
    }

    /// Number of connected weights: the sum over output positions of the in-range taps of
    /// the window, times `C·F` (the implementation-3 kernel length).
    pub fn nnz(&self) -> usize {
        let mut windows = 1usize;
        for ax in 0..3 {
            windows =
                windows.saturating_mul(self.tap_pos[ax].iter().filter(|t| t.is_some()).count());
        }
        windows.saturating_mul(self.c).saturating_mul(self.f)
    }

    /// The Keras file shape of the kernel for this layer's implementation
    /// (keras-lc-semantics §2.1). Errors if a size overflows.
    pub fn keras_kernel_shape(&self) -> Result<Vec<usize>, String> {
        let (ins, outs) = (self.in_spatial(), self.out_spatial());
        let v = match (self.implementation, self.data_format) {
            (1, _) => self.canonical_kernel_shape(),
            (2, DataFormat::ChannelsLast) => [ins, &[self.c], outs, &[self.f]].concat(),
            (2, DataFormat::ChannelsFirst) => [&[self.c], ins, &[self.f], outs].concat(),
            _ => {
                let mut windows = 1usize;
                for ax in 0..3 {
                    let w = self.tap_pos[ax].iter().filter(|t| t.is_some()).count();
                    windows = windows.checked_mul(w).ok_or("kernel size overflows")?;
                }
                vec![checked_product(&[windows, self.c, self.f])?]
            }
        };
        checked_product(&v)?;
        Ok(v)
    }

    /// Which taps exist: entry `p·K + tk` is true when tap `tk` (row-major over the
    /// kernel window) of output position `p` lies inside the input. All true for `valid`
    /// padding; canonical kernel entries `(p, q, f)` of a false tap are zero.
    pub fn tap_mask(&self) -> Vec<bool> {
        let mut mask = vec![false; self.positions() * self.taps()];
        let w = self.windows();
        let kk = self.taps();
        for p in 0..self.positions() {
            for &(tk, _) in &w.taps[w.start[p]..w.start[p + 1]] {
                mask[p * kk + tk] = true;
            }
        }
        mask
    }

    /// Keras's implementation-2 connectivity mask, flattened row-major as an `(N, P)`
    /// matrix (input position, output position): 1.0 where connected. Keras's mask
    /// tensor has this data with shape `(in…, 1, out…, 1)` (channels_last) or
    /// `(1, in…, 1, out…)` (channels_first).
    pub fn connectivity_mask(&self) -> Vec<f32> {
        let p_len = self.positions();
        let mut mask = vec![0.0; self.input_positions() * p_len];
        let w = self.windows();
        for p in 0..p_len {
            for &(_, ip) in &w.taps[w.start[p]..w.start[p + 1]] {
                mask[ip * p_len + p] = 1.0;
            }
        }
        mask
    }

    fn windows(&self) -> Windows {
        let [_, n1, n2] = self.n;
        let [k0, k1, k2] = self.k;
        let [o0n, o1n, o2n] = self.out;
        let mut start = Vec::with_capacity(self.positions() + 1);
        let mut taps = Vec::new();
        start.push(0);
        for o0 in 0..o0n {
            for o1 in 0..o1n {
                for o2 in 0..o2n {
                    for t0 in 0..k0 {
                        let Some(i0) = self.tap_pos[0][o0 * k0 + t0] else {
                            continue;
                        };
                        for t1 in 0..k1 {
                            let Some(i1) = self.tap_pos[1][o1 * k1 + t1] else {
                                continue;
                            };
                            for t2 in 0..k2 {
                                let Some(i2) = self.tap_pos[2][o2 * k2 + t2] else {
                                    continue;
                                };
                                taps.push(((t0 * k1 + t1) * k2 + t2, (i0 * n1 + i1) * n2 + i2));
                            }
                        }
                    }
                    start.push(taps.len());
                }
            }
        }
        Windows { start, taps }
    }

    fn q_of(&self, tk: usize, c: usize) -> usize {
        match self.data_format {
            DataFormat::ChannelsLast => tk * self.c + c,
            DataFormat::ChannelsFirst => c * self.taps() + tk,
        }
    }

    fn check_len(what: &str, data: &[f32], expected: &[usize]) -> Result<(), String> {
        let n = checked_product(expected)?;
        if data.len() != n {
            return Err(format!(
                "{what} has {} elements, expected {n} (shape {expected:?})",
                data.len()
            ));
        }
        Ok(())
    }

    /// Converts a kernel from this layer's Keras file layout (row-major data of shape
    /// [`LcGeometry::keras_kernel_shape`]) to the canonical `(P, Q, F)` layout. Masked
    /// entries of implementation 2 are not part of it (take them with
    /// [`LcGeometry::split_off_mask`]); taps outside the input are zero.
    pub fn kernel_to_canonical(&self, keras: &[f32]) -> Result<Vec<f32>, String> {
        Self::check_len("Keras kernel", keras, &self.keras_kernel_shape()?)?;
        self.convert::<true>(keras)
    }

    /// Converts a canonical `(P, Q, F)` kernel to this layer's Keras file layout. Masked
    /// entries of implementation 2 are written as zero (put kept ones back with
    /// [`LcGeometry::merge_off_mask`]); canonical weights of taps outside
    /// the input are dropped (implementations 2 and 3) or kept (implementation 1).
    pub fn kernel_to_keras(&self, canonical: &[f32]) -> Result<Vec<f32>, String> {
        Self::check_len(
            "canonical kernel",
            canonical,
            &self.canonical_kernel_shape(),
        )?;
        self.convert::<false>(canonical)
    }

    /// Shared walk over every connected `(p, q, f)`: with `TO_CANONICAL` it copies from
    /// the Keras layout `src` into the canonical layout, otherwise the other way round.
    fn convert<const TO_CANONICAL: bool>(&self, src: &[f32]) -> Result<Vec<f32>, String> {
        let (pn, qn, f_n, c_n, n_n) = (
            self.positions(),
            self.patch_len(),
            self.f,
            self.c,
            self.input_positions(),
        );
        let dst_len = if TO_CANONICAL {
            checked_product(&self.canonical_kernel_shape())?
        } else {
            checked_product(&self.keras_kernel_shape()?)?
        };
        if self.implementation == 1 {
            let mut v = src.to_vec();
            if TO_CANONICAL {
                self.zero_missing_taps(&mut v)?;
            }
            return Ok(v);
        }
        let mut dst = vec![0.0f32; dst_len];
        // (canonical index, keras index) pairs are visited; `mv` copies one of them.
        let mut mv = |canon: usize, keras: usize| {
            if TO_CANONICAL {
                dst[canon] = src[keras];
            } else {
                dst[keras] = src[canon];
            }
        };
        let w = self.windows();
        match (self.implementation, self.data_format) {
            (2, DataFormat::ChannelsLast) => {
                for p in 0..pn {
                    for &(tk, ip) in &w.taps[w.start[p]..w.start[p + 1]] {
                        for c in 0..c_n {
                            let canon = (p * qn + self.q_of(tk, c)) * f_n;
                            let keras = ((ip * c_n + c) * pn + p) * f_n;
                            for f in 0..f_n {
                                mv(canon + f, keras + f);
                            }
                        }
                    }
                }
            }
            (2, DataFormat::ChannelsFirst) => {
                for p in 0..pn {
                    for &(tk, ip) in &w.taps[w.start[p]..w.start[p + 1]] {
                        for c in 0..c_n {
                            let canon = (p * qn + self.q_of(tk, c)) * f_n;
                            let keras = (c * n_n + ip) * f_n * pn + p;
                            for f in 0..f_n {
                                mv(canon + f, keras + f * pn);
                            }
                        }
                    }
                }
            }
            (_, DataFormat::ChannelsLast) => {
                // Rows out_idx = p·F + f; within a row (tap, c) ascending.
                let mut i = 0;
                for p in 0..pn {
                    let win = &w.taps[w.start[p]..w.start[p + 1]];
                    for f in 0..f_n {
                        for &(tk, _) in win {
                            for c in 0..c_n {
                                mv((p * qn + self.q_of(tk, c)) * f_n + f, i);
                                i += 1;
                            }
                        }
                    }
                }
            }
            (_, DataFormat::ChannelsFirst) => {
                // Rows out_idx = f·P + p; within a row (c, tap) ascending. Row (f, p)
                // starts at f·W + C·start[p] with W = nnz / F; walking p outermost keeps
                // the canonical side local.
                let row_w = c_n * w.taps.len();
                for p in 0..pn {
                    let win = &w.taps[w.start[p]..w.start[p + 1]];
                    for f in 0..f_n {
                        let mut i = f * row_w + c_n * w.start[p];
                        for c in 0..c_n {
                            for &(tk, _) in win {
                                mv((p * qn + self.q_of(tk, c)) * f_n + f, i);
                                i += 1;
                            }
                        }
                    }
                }
            }
        }
        Ok(dst)
    }

    /// Zeroes, in a canonical kernel, the weights of taps outside the input (nothing to
    /// do for `valid` padding), establishing the canonical-layout invariant.
    pub fn zero_missing_taps(&self, canonical: &mut [f32]) -> Result<(), String> {
        Self::check_len(
            "canonical kernel",
            canonical,
            &self.canonical_kernel_shape(),
        )?;
        let (kk, qn, f_n) = (self.taps(), self.patch_len(), self.f);
        if self
            .tap_pos
            .iter()
            .all(|axis| axis.iter().all(Option::is_some))
        {
            return Ok(());
        }
        for (idx, present) in self.tap_mask().into_iter().enumerate() {
            if !present {
                let (p, tk) = (idx / kk, idx % kk);
                for c in 0..self.c {
                    let base = (p * qn + self.q_of(tk, c)) * f_n;
                    canonical[base..base + f_n].fill(0.0);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::graph::layout::{canonical_to_keras, keras_to_canonical};
    use crate::graph::ops::*;
    use crate::graph::Graph;
    use ndarray::ArrayD;
    use serde_json::Value;

    fn sizes(v: &Value) -> Vec<usize> {
        match v {
            Value::Array(a) => a
                .iter()
                .filter_map(Value::as_u64)
                .map(|x| x as usize)
                .collect(),
            other => other.as_u64().map(|x| vec![x as usize]).unwrap_or_default(),
        }
    }

    /// Every LC layer with implementation 2 or 3 in the golden cases: the inferred Keras
    /// kernel shape matches `weights.npz`, impl-3 kernels survive a round trip exactly,
    /// and Keras's impl-2 gradients are zero exactly where our mask says "not connected"
    /// (a round trip, which zeroes masked entries, leaves them unchanged).
    #[test]
    fn golden_kernels_agree_with_the_connectivity() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/keras-golden");
        let Ok(dirs) = std::fs::read_dir(root) else {
            return;
        };
        let mut checked = 0;
        for dir in dirs.flatten().map(|d| d.path()) {
            let Ok(text) = std::fs::read_to_string(dir.join("model.json")) else {
                continue;
            };
            let model: Value = serde_json::from_str(&text).unwrap();
            let layers = model["config"]["layers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for layer in layers {
                let class = layer["class_name"].as_str().unwrap_or("");
                let cfg = &layer["config"];
                let imp = cfg["implementation"].as_u64().unwrap_or(1) as u8;
                if !class.starts_with("LocallyConnected") || imp == 1 {
                    continue;
                }
                let name = cfg["name"].as_str().unwrap();
                let input = sizes(&layer["build_config"]["input_shape"]);
                let kernel = sizes(&cfg["kernel_size"]);
                let df = match cfg["data_format"].as_str() {
                    Some("channels_first") => DataFormat::ChannelsFirst,
                    _ => DataFormat::ChannelsLast,
                };
                let padding = match cfg["padding"].as_str().map(str::to_lowercase).as_deref() {
                    Some("same") => Padding::Same,
                    _ => Padding::Valid,
                };
                let lc = LocallyConnected {
                    rank: kernel.len(),
                    filters: cfg["filters"].as_u64().unwrap() as usize,
                    dilation: vec![1; kernel.len()],
                    strides: sizes(&cfg["strides"]),
                    kernel,
                    padding,
                    data_format: df,
                    activation: Activation::Linear,
                    use_bias: cfg["use_bias"].as_bool().unwrap_or(true),
                    implementation: imp,
                    kernel_initializer: Initializer::Zeros,
                    bias_initializer: Initializer::Zeros,
                    options: WeightOptions::default(),
                };
                let mut g = Graph::new("golden");
                let x = g.add_input("x", input.clone()).unwrap();
                let id = g.add(name, Op::LocallyConnected(lc), &[x]).unwrap();
                let kp = g.nodes[id].params[0];
                let read = |file: &str| -> ArrayD<f32> {
                    let f = std::fs::File::open(dir.join(file)).unwrap();
                    let mut npz = ndarray_npy::NpzReader::new(f).unwrap();
                    npz.by_name(&format!("{name}/kernel")).unwrap()
                };
                let label = format!("{} layer {name}", dir.display());
                let w = read("weights.npz");
                assert_eq!(w.shape(), &g.params[kp].keras_shape[..], "{label}");
                let grad = read("grads.npz");
                // Impl 3: weights and gradients; impl 2: gradients only (masked weights
                // are random in the file, masked gradients are exactly zero).
                let ks = if imp == 3 { vec![w, grad] } else { vec![grad] };
                for k in ks {
                    let canon = keras_to_canonical(&g, kp, k.clone()).unwrap();
                    let back = canonical_to_keras(&g, kp, &canon).unwrap();
                    assert_eq!(back, k, "{label}");
                }
                checked += 1;
            }
        }
        assert!(checked >= 10, "only {checked} golden LC layers checked");
    }
}
