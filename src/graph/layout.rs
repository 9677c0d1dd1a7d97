//! Conversion of weights between Keras file layouts and the canonical layout of the graph
//! IR (see the `graph` module docs), including LocallyConnected implementations 1, 2, 3.
//!
//! - LocallyConnected kernel: see [`super::layout_lc`] (implementation 1 is the canonical
//!   layout; 2 and 3 are gathered from / scattered to their connected entries).
//! - LocallyConnected bias: a plain row-major reshape between Keras's `(out…, F)` and the
//!   canonical per-sample output shape; for channels_first this is Keras's bias quirk
//!   (keras-lc-semantics §3.3), not a transpose.
//! - Every other weight: the canonical layout is the Keras layout (shape check only).
//!
//! An implementation-2 kernel also has entries outside its connectivity mask, which the
//! canonical layout does not hold: [`keras_to_canonical_split`] returns them beside the
//! canonical kernel and [`canonical_to_keras_merged`] writes them back (see
//! [`off_mask`]); [`keras_to_canonical`] / [`canonical_to_keras`] drop them / write zeros.

use super::layout_lc::LcGeometry;
use super::{Graph, Node, Op, ParamId, ParamSpec};
use ndarray::{ArrayD, IxDyn};

pub mod off_mask;
pub use off_mask::{canonical_to_keras_merged, keras_to_canonical_split, off_mask_len};

/// What a parameter's layout conversion needs: its spec and, for an LC kernel, the
/// layer geometry (checked against the spec's shapes).
enum Target<'g> {
    LcKernel(&'g ParamSpec, LcGeometry),
    Reshape(&'g ParamSpec),
}

fn target(graph: &Graph, param: ParamId) -> Result<Target<'_>, String> {
    let spec = graph
        .params
        .get(param)
        .ok_or_else(|| format!("parameter {param} does not exist"))?;
    let node: &Node = graph.nodes.get(spec.node).ok_or_else(|| {
        format!(
            "parameter '{}' belongs to missing node {}",
            spec.name, spec.node
        )
    })?;
    let same_count =
        spec.shape.iter().product::<usize>() == spec.keras_shape.iter().product::<usize>();
    match &node.op {
        Op::LocallyConnected(lc) if spec.name == "kernel" => {
            let input = node
                .inputs
                .first()
                .and_then(|&i| graph.nodes.get(i))
                .ok_or_else(|| format!("layer '{}' has no input node", node.name))?;
            let geom = LcGeometry::new(lc, &input.shape)?;
            if geom.canonical_kernel_shape() != spec.shape || geom.keras_kernel_shape()? != spec.keras_shape {
                return Err(format!(
                    "internal: kernel shapes of layer '{}' disagree: graph has canonical {:?} / Keras {:?}, geometry gives {:?} / {:?}",
                    node.name,
                    spec.shape,
                    spec.keras_shape,
                    geom.canonical_kernel_shape(),
                    geom.keras_kernel_shape()?
                ));
            }
            Ok(Target::LcKernel(spec, geom))
        }
        Op::LocallyConnected(_) if spec.name == "bias" && same_count => Ok(Target::Reshape(spec)),
        Op::LocallyConnected(_) => Err(format!(
            "no layout conversion for weight '{}' of locally connected layer '{}' (canonical {:?}, Keras {:?})",
            spec.name, node.name, spec.shape, spec.keras_shape
        )),
        _ if spec.shape == spec.keras_shape => Ok(Target::Reshape(spec)),
        _ => Err(format!(
            "no layout conversion for weight '{}' of layer '{}' ({}): canonical {:?} differs from Keras {:?}",
            spec.name,
            node.name,
            node.op.kind_name(),
            spec.shape,
            spec.keras_shape
        )),
    }
}

/// The geometry of parameter `param` if it is a LocallyConnected kernel (checked against
/// its spec), `None` for any other parameter.
pub fn lc_kernel_geometry(graph: &Graph, param: ParamId) -> Result<Option<LcGeometry>, String> {
    Ok(match target(graph, param)? {
        Target::LcKernel(_, geom) => Some(geom),
        Target::Reshape(_) => None,
    })
}

fn check_shape(what: &str, found: &[usize], expected: &[usize]) -> Result<(), String> {
    if found != expected {
        return Err(format!(
            "expected {what} shape {expected:?}, found {found:?}"
        ));
    }
    Ok(())
}

/// Row-major data of `a` (copied only if `a` is not in standard layout).
fn flat<'a>(a: &'a ArrayD<f32>) -> ndarray::CowArray<'a, f32, IxDyn> {
    a.as_standard_layout()
}

fn from_vec(shape: &[usize], v: Vec<f32>) -> Result<ArrayD<f32>, String> {
    ArrayD::from_shape_vec(IxDyn(shape), v).map_err(|e| format!("internal: {e}"))
}

/// Converts a weight from its Keras file layout (`ParamSpec::keras_shape`) to canonical
/// layout (`ParamSpec::shape`). Errors (wrong shape: "expected shape …, found …";
/// inconsistent graph) are a detail string that the caller wraps with file, layer and
/// weight names.
pub fn keras_to_canonical(
    graph: &Graph,
    param: ParamId,
    keras: ArrayD<f32>,
) -> Result<ArrayD<f32>, String> {
    match target(graph, param)? {
        Target::LcKernel(spec, geom) if geom.implementation() == 1 => {
            // Same layout: reuse the buffer (no copy for a standard-layout array).
            check_shape("kernel", keras.shape(), &spec.keras_shape)?;
            let mut k = keras
                .into_shape_clone(IxDyn(&spec.shape))
                .map_err(|e| format!("internal: {e}"))?;
            let slice = k
                .as_slice_mut()
                .ok_or("internal: reshaped array is not contiguous")?;
            geom.zero_missing_taps(slice)?;
            Ok(k)
        }
        Target::LcKernel(spec, geom) => {
            check_shape("kernel", keras.shape(), &spec.keras_shape)?;
            let data = flat(&keras);
            let slice = data
                .as_slice()
                .ok_or("internal: standard-layout array is not contiguous")?;
            from_vec(&spec.shape, geom.kernel_to_canonical(slice)?)
        }
        Target::Reshape(spec) => {
            check_shape(&spec.name, keras.shape(), &spec.keras_shape)?;
            keras
                .into_shape_clone(IxDyn(&spec.shape))
                .map_err(|e| format!("internal: {e}"))
        }
    }
}

/// Converts a canonical weight back to the Keras file layout of its layer (masked entries
/// of implementation 2 are zero).
pub fn canonical_to_keras(
    graph: &Graph,
    param: ParamId,
    canonical: &ArrayD<f32>,
) -> Result<ArrayD<f32>, String> {
    match target(graph, param)? {
        Target::LcKernel(spec, geom) => {
            check_shape("canonical kernel", canonical.shape(), &spec.shape)?;
            let data = flat(canonical);
            let slice = data
                .as_slice()
                .ok_or("internal: standard-layout array is not contiguous")?;
            from_vec(&spec.keras_shape, geom.kernel_to_keras(slice)?)
        }
        Target::Reshape(spec) => {
            check_shape(
                &format!("canonical {}", spec.name),
                canonical.shape(),
                &spec.shape,
            )?;
            canonical
                .to_shape(IxDyn(&spec.keras_shape))
                .map(|a| a.into_owned())
                .map_err(|e| format!("internal: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::geometry::lc_window_start;
    use crate::graph::ops::*;
    use ndarray::Dimension;

    fn lc_op(
        kernel: &[usize],
        strides: &[usize],
        dilation: &[usize],
        padding: Padding,
        data_format: DataFormat,
        filters: usize,
        implementation: u8,
    ) -> LocallyConnected {
        LocallyConnected {
            rank: kernel.len(),
            filters,
            kernel: kernel.to_vec(),
            strides: strides.to_vec(),
            dilation: dilation.to_vec(),
            padding,
            data_format,
            activation: Activation::Linear,
            use_bias: true,
            implementation,
            kernel_initializer: Initializer::Zeros,
            bias_initializer: Initializer::Zeros,
            options: WeightOptions::default(),
        }
    }

    /// A graph `x → lc`; returns it with the kernel and bias parameter ids.
    fn lc_graph(input: &[usize], lc: LocallyConnected) -> (Graph, ParamId, ParamId) {
        let mut g = Graph::new("t");
        let x = g.add_input("x", input.to_vec()).unwrap();
        let id = g.add("lc", Op::LocallyConnected(lc), &[x]).unwrap();
        let ps = g.nodes[id].params.clone();
        (g, ps[0], ps[1])
    }

    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> f32 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 40) as f32) / ((1u64 << 24) as f32) - 0.5
        }
    }

    fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
        let mut v = vec![0; shape.len()];
        for a in (0..shape.len()).rev() {
            v[a] = i % shape[a];
            i /= shape[a];
        }
        v
    }

    fn ravel(idx: &[usize], shape: &[usize]) -> usize {
        idx.iter().zip(shape).fold(0, |acc, (&i, &n)| acc * n + i)
    }

    /// Independent oracle, straight from keras-lc-semantics §2.2–2.4 and §3.4: for every
    /// canonical `(p, q, f)`, the input position of its tap (None if clipped), its
    /// implementation-2 multi-index and its implementation-3 `(out_idx, in_idx)` key.
    struct Entry {
        canon: usize,
        k2: Option<Vec<usize>>,
        key3: Option<(usize, usize)>,
    }

    fn oracle(lc: &LocallyConnected, input: &[usize], out_shape: &[usize]) -> Vec<Entry> {
        let r = lc.rank;
        let cl = lc.data_format == DataFormat::ChannelsLast;
        let (ins, c_n) = if cl {
            (&input[..r], input[r])
        } else {
            (&input[1..], input[0])
        };
        let outs = if cl { &out_shape[..r] } else { &out_shape[1..] };
        let (pn, kn, f_n) = (
            outs.iter().product::<usize>(),
            lc.kernel.iter().product::<usize>(),
            lc.filters,
        );
        let mut v = Vec::new();
        for p in 0..pn {
            let o = unravel(p, outs);
            for q in 0..kn * c_n {
                let (tk, c) = if cl {
                    (q / c_n, q % c_n)
                } else {
                    (q % kn, q / kn)
                };
                let t = unravel(tk, &lc.kernel);
                let mut pos = Vec::new();
                for a in 0..r {
                    let i = lc_window_start(
                        o[a],
                        lc.kernel[a],
                        lc.strides[a],
                        lc.dilation[a],
                        lc.padding,
                    ) + (t[a] * lc.dilation[a]) as i64;
                    if i >= 0 && (i as usize) < ins[a] {
                        pos.push(i as usize);
                    }
                }
                let ok = pos.len() == r;
                for f in 0..f_n {
                    let canon = (p * kn * c_n + q) * f_n + f;
                    let (k2, key3) = if ok {
                        let k2 = if cl {
                            [&pos[..], &[c], &o[..], &[f]].concat()
                        } else {
                            [&[c], &pos[..], &[f], &o[..]].concat()
                        };
                        let ip = ravel(&pos, ins);
                        let n = ins.iter().product::<usize>();
                        let key = if cl {
                            (p * f_n + f, ip * c_n + c)
                        } else {
                            (f * pn + p, c * n + ip)
                        };
                        (Some(k2), Some(key))
                    } else {
                        (None, None)
                    };
                    v.push(Entry { canon, k2, key3 });
                }
            }
        }
        v
    }

    /// Checks one configuration against the oracle: save, load, masked entries.
    fn check_case(input: &[usize], lc: LocallyConnected, rng: &mut Lcg) {
        let label = format!("{input:?} {lc:?}");
        let (g, kp, _) = lc_graph(input, lc.clone());
        let spec = &g.params[kp];
        let entries = oracle(&lc, input, &g.nodes[1].shape);
        let mut cs = vec![0.0f32; spec.len()];
        for e in &entries {
            if e.k2.is_some() {
                cs[e.canon] = rng.next();
            }
        }
        let canon = ArrayD::from_shape_vec(IxDyn(&spec.shape), cs.clone()).unwrap();
        let keras = canonical_to_keras(&g, kp, &canon).unwrap();
        assert_eq!(keras.shape(), &spec.keras_shape[..], "{label}");
        let mut garbage = keras.clone();
        match lc.implementation {
            1 => {
                // Identity, except that clipped taps (only with `same`) are zeroed on load.
                assert_eq!(keras, canon, "{label}");
                let gs = garbage.as_slice_mut().unwrap();
                for e in entries.iter().filter(|e| e.k2.is_none()) {
                    gs[e.canon] = 1e6;
                }
            }
            2 => {
                let mut seen = ArrayD::from_elem(IxDyn(&spec.keras_shape), false);
                for e in entries.iter().filter(|e| e.k2.is_some()) {
                    let idx = IxDyn(e.k2.as_ref().unwrap());
                    assert_eq!(keras[&idx], cs[e.canon], "{label}");
                    seen[&idx] = true;
                }
                for (x, s) in garbage.iter_mut().zip(seen.iter()) {
                    if !*s {
                        assert_eq!(*x, 0.0, "{label}: masked entry not zero");
                        *x = 1e6 + rng.next();
                    }
                }
            }
            _ => {
                let mut keyed: Vec<_> = entries
                    .iter()
                    .filter_map(|e| e.key3.map(|k| (k, cs[e.canon])))
                    .collect();
                keyed.sort_by_key(|&(k, _)| k);
                let want: Vec<f32> = keyed.into_iter().map(|(_, x)| x).collect();
                assert_eq!(keras.as_slice().unwrap(), &want[..], "{label}");
            }
        }
        let back = keras_to_canonical(&g, kp, garbage).unwrap();
        assert_eq!(back, canon, "{label}");
    }

    /// Input spatial shape, kernel, strides, dilation.
    type Cfg<'a> = (&'a [usize], &'a [usize], &'a [usize], &'a [usize]);

    #[test]
    fn all_implementations_match_the_oracle() {
        use DataFormat::*;
        use Padding::*;
        let mut rng = Lcg(7);
        let mut cases = 0;
        for imp in 1..=3u8 {
            for df in [ChannelsLast, ChannelsFirst] {
                for pad in [Valid, Same] {
                    for s in 1..=3 {
                        for d in 1..=2 {
                            let s2 = s % 3 + 1;
                            let d2 = 3 - d;
                            let configs: [Cfg; 4] = [
                                (&[8], &[3], &[s], &[d]),
                                (&[9], &[2], &[s], &[d]),
                                (&[7, 6], &[3, 2], &[s, s2], &[d, d2]),
                                (&[5, 4, 6], &[2, 3, 2], &[s, s2, s], &[d2, 1, d]),
                            ];
                            for (sp, k, st, dl) in configs {
                                let (c, f) = (2, 3);
                                let input = match df {
                                    ChannelsLast => [sp, &[c]].concat(),
                                    ChannelsFirst => [&[c], sp].concat(),
                                };
                                check_case(&input, lc_op(k, st, dl, pad, df, f, imp), &mut rng);
                                cases += 1;
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(cases, 3 * 2 * 2 * 3 * 2 * 4);
    }

    fn shapes_of(input: &[usize], lc: LocallyConnected) -> (Vec<usize>, Vec<usize>, Vec<usize>) {
        let (g, kp, bp) = lc_graph(input, lc);
        (
            g.nodes[1].shape.clone(),
            g.params[kp].keras_shape.clone(),
            g.params[bp].keras_shape.clone(),
        )
    }

    #[test]
    #[rustfmt::skip]
    fn shapes_match_the_tf_keras_tables() {
        use DataFormat::*;
        use Padding::*;
        // keras-lc-semantics §5.4 (batch axis dropped): (format, padding, impl, stride,
        // input, output, kernel, bias).
        type Row = (DataFormat, Padding, u8, usize, &'static [usize], &'static [usize], &'static [usize], &'static [usize]);
        let d1: [Row; 10] = [
            (ChannelsFirst, Valid, 1, 1, &[8, 5], &[4, 3], &[3, 24, 4], &[3, 4]),
            (ChannelsFirst, Valid, 2, 1, &[8, 5], &[4, 3], &[8, 5, 4, 3], &[3, 4]),
            (ChannelsFirst, Valid, 3, 1, &[8, 5], &[4, 3], &[288], &[3, 4]),
            (ChannelsFirst, Same, 2, 1, &[8, 5], &[4, 5], &[8, 5, 4, 5], &[5, 4]),
            (ChannelsFirst, Same, 3, 1, &[8, 5], &[4, 5], &[416], &[5, 4]),
            (ChannelsLast, Valid, 1, 1, &[8, 5], &[6, 4], &[6, 15, 4], &[6, 4]),
            (ChannelsLast, Valid, 2, 1, &[8, 5], &[6, 4], &[8, 5, 6, 4], &[6, 4]),
            (ChannelsLast, Valid, 3, 1, &[8, 5], &[6, 4], &[360], &[6, 4]),
            (ChannelsLast, Same, 2, 1, &[8, 5], &[8, 4], &[8, 5, 8, 4], &[8, 4]),
            (ChannelsLast, Same, 3, 1, &[8, 5], &[8, 4], &[440], &[8, 4]),
        ];
        for (df, pad, imp, s, input, out, k, b) in d1 {
            let got = shapes_of(input, lc_op(&[3], &[s], &[1], pad, df, 4, imp));
            assert_eq!(got, (out.to_vec(), k.to_vec(), b.to_vec()), "{df:?} {pad:?} {imp}");
        }
        let d2: [Row; 26] = [
            (ChannelsFirst, Valid, 1, 1, &[6, 10, 4], &[3, 8, 2], &[16, 54, 3], &[8, 2, 3]),
            (ChannelsFirst, Valid, 1, 2, &[6, 10, 4], &[3, 4, 1], &[4, 54, 3], &[4, 1, 3]),
            (ChannelsFirst, Valid, 2, 1, &[6, 10, 4], &[3, 8, 2], &[6, 10, 4, 3, 8, 2], &[8, 2, 3]),
            (ChannelsFirst, Valid, 2, 2, &[6, 10, 4], &[3, 4, 1], &[6, 10, 4, 3, 4, 1], &[4, 1, 3]),
            (ChannelsFirst, Valid, 3, 1, &[6, 10, 4], &[3, 8, 2], &[2592], &[8, 2, 3]),
            (ChannelsFirst, Valid, 3, 2, &[6, 10, 4], &[3, 4, 1], &[648], &[4, 1, 3]),
            (ChannelsFirst, Same, 2, 1, &[6, 10, 4], &[3, 10, 4], &[6, 10, 4, 3, 10, 4], &[10, 4, 3]),
            (ChannelsFirst, Same, 3, 1, &[6, 10, 4], &[3, 10, 4], &[5040], &[10, 4, 3]),
            (ChannelsLast, Valid, 1, 1, &[6, 10, 4], &[4, 8, 3], &[32, 36, 3], &[4, 8, 3]),
            (ChannelsLast, Valid, 1, 2, &[6, 10, 4], &[2, 4, 3], &[8, 36, 3], &[2, 4, 3]),
            (ChannelsLast, Valid, 2, 1, &[6, 10, 4], &[4, 8, 3], &[6, 10, 4, 4, 8, 3], &[4, 8, 3]),
            (ChannelsLast, Valid, 2, 2, &[6, 10, 4], &[2, 4, 3], &[6, 10, 4, 2, 4, 3], &[2, 4, 3]),
            (ChannelsLast, Valid, 3, 1, &[6, 10, 4], &[4, 8, 3], &[3456], &[4, 8, 3]),
            (ChannelsLast, Valid, 3, 2, &[6, 10, 4], &[2, 4, 3], &[864], &[2, 4, 3]),
            (ChannelsLast, Same, 2, 1, &[6, 10, 4], &[6, 10, 3], &[6, 10, 4, 6, 10, 3], &[6, 10, 3]),
            (ChannelsLast, Same, 3, 1, &[6, 10, 4], &[6, 10, 3], &[5376], &[6, 10, 3]),
            // test_locallyconnected_2d_regularization, input (6,7,4).
            (ChannelsFirst, Valid, 1, 1, &[6, 7, 4], &[3, 5, 2], &[10, 54, 3], &[5, 2, 3]),
            (ChannelsFirst, Valid, 2, 1, &[6, 7, 4], &[3, 5, 2], &[6, 7, 4, 3, 5, 2], &[5, 2, 3]),
            (ChannelsFirst, Valid, 3, 1, &[6, 7, 4], &[3, 5, 2], &[1620], &[5, 2, 3]),
            (ChannelsFirst, Same, 2, 1, &[6, 7, 4], &[3, 7, 4], &[6, 7, 4, 3, 7, 4], &[7, 4, 3]),
            (ChannelsFirst, Same, 3, 1, &[6, 7, 4], &[3, 7, 4], &[3420], &[7, 4, 3]),
            (ChannelsLast, Valid, 1, 1, &[6, 7, 4], &[4, 5, 3], &[20, 36, 3], &[4, 5, 3]),
            (ChannelsLast, Valid, 2, 1, &[6, 7, 4], &[4, 5, 3], &[6, 7, 4, 4, 5, 3], &[4, 5, 3]),
            (ChannelsLast, Valid, 3, 1, &[6, 7, 4], &[4, 5, 3], &[2160], &[4, 5, 3]),
            (ChannelsLast, Same, 2, 1, &[6, 7, 4], &[6, 7, 3], &[6, 7, 4, 6, 7, 3], &[6, 7, 3]),
            (ChannelsLast, Same, 3, 1, &[6, 7, 4], &[6, 7, 3], &[3648], &[6, 7, 3]),
        ];
        for (df, pad, imp, s, input, out, k, b) in d2 {
            let got = shapes_of(input, lc_op(&[3, 3], &[s, s], &[1, 1], pad, df, 3, imp));
            assert_eq!(got, (out.to_vec(), k.to_vec(), b.to_vec()), "{df:?} {pad:?} {imp} {s}");
        }
        // Implementation-mode test, first LC layer (kernel 3, filters 2, stride 1, valid).
        for (df, input, k2, out) in [
            (ChannelsFirst, &[2, 7][..], &[2, 7, 2, 5][..], &[2, 5][..]),
            (ChannelsLast, &[7, 2], &[7, 2, 5, 2], &[5, 2]),
            (ChannelsFirst, &[2, 7, 6], &[2, 7, 6, 2, 5, 2], &[2, 5, 2]),
            (ChannelsLast, &[7, 6, 2], &[7, 6, 2, 5, 2, 2], &[5, 2, 2]),
        ] {
            let r = input.len() - 1;
            // 1D kernel 3 stride 1; 2D kernel (3,2) strides (1,3) (§5.3).
            let (k, s, d) = if r == 1 { (vec![3], vec![1], vec![1]) } else { (vec![3, 2], vec![1, 3], vec![1, 1]) };
            let (p, bias) = if r == 1 { (vec![5, 6, 2], vec![5, 2]) } else { (vec![10, 12, 2], vec![5, 2, 2]) };
            let nnz = if r == 1 { 60 } else { 240 };
            for (imp, want) in [(1, p), (2, k2.to_vec()), (3, vec![nnz])] {
                let got = shapes_of(input, lc_op(&k, &s, &d, Valid, df, 2, imp));
                assert_eq!(got, (out.to_vec(), want, bias.clone()), "{df:?} rank {r} impl {imp}");
            }
        }
    }

    #[test]
    fn nnz_example_of_section_2_1() {
        // 1D, n=8, k=3, s=2, same, C=2, F=3: windows of 2, 3, 3, 3 taps → 66.
        let lc = lc_op(
            &[3],
            &[2],
            &[1],
            Padding::Same,
            DataFormat::ChannelsLast,
            3,
            3,
        );
        let geom = LcGeometry::new(&lc, &[8, 2]).unwrap();
        assert_eq!(geom.nnz(), 66);
        assert_eq!(shapes_of(&[8, 2], lc).1, vec![66]);
        let mask: Vec<bool> = geom.tap_mask();
        assert_eq!(
            mask,
            [false, true, true, true, true, true, true, true, true, true, true, true]
        );
    }

    #[test]
    fn impl3_valid_closed_forms() {
        // §2.4: v[(p·F + f)·Q + q] (channels_last), v[(f·P + p)·Q + q] (channels_first).
        let mut rng = Lcg(3);
        for df in [DataFormat::ChannelsLast, DataFormat::ChannelsFirst] {
            let input = if df == DataFormat::ChannelsLast {
                [7, 8, 3]
            } else {
                [3, 7, 8]
            };
            let lc = lc_op(&[3, 2], &[2, 3], &[1, 1], Padding::Valid, df, 4, 3);
            let (g, kp, _) = lc_graph(&input, lc);
            let (pn, qn, f_n) = (
                g.params[kp].shape[0],
                g.params[kp].shape[1],
                g.params[kp].shape[2],
            );
            let k1: Vec<f32> = (0..pn * qn * f_n).map(|_| rng.next()).collect();
            let canon = ArrayD::from_shape_vec(IxDyn(&[pn, qn, f_n]), k1.clone()).unwrap();
            let v = canonical_to_keras(&g, kp, &canon).unwrap();
            let v = v.as_slice().unwrap();
            for p in 0..pn {
                for q in 0..qn {
                    for f in 0..f_n {
                        let i = match df {
                            DataFormat::ChannelsLast => (p * f_n + f) * qn + q,
                            DataFormat::ChannelsFirst => (f * pn + p) * qn + q,
                        };
                        assert_eq!(v[i], k1[(p * qn + q) * f_n + f]);
                    }
                }
            }
        }
    }

    /// All index tuples of a 6-D grid, row-major.
    fn itertools6(
        a: usize,
        b: usize,
        c: usize,
        d: usize,
        e: usize,
        f: usize,
    ) -> impl Iterator<Item = (usize, usize, usize, usize, usize, usize)> {
        (0..a * b * c * d * e * f).map(move |x| {
            let v = unravel(x, &[a, b, c, d, e, f]);
            (v[0], v[1], v[2], v[3], v[4], v[5])
        })
    }

    #[test]
    fn impl2_valid_mapping_of_section_2_3() {
        // 2D channels_first: K2[c, i·sh+kr, j·sw+kc, f, i, j] = K1[i·OW+j, c·kh·kw + kr·kw + kc, f].
        let lc = lc_op(
            &[2, 3],
            &[2, 1],
            &[1, 1],
            Padding::Valid,
            DataFormat::ChannelsFirst,
            2,
            2,
        );
        let (g, kp, _) = lc_graph(&[3, 5, 6], lc);
        let shape = g.params[kp].shape.clone(); // (2·4, 3·6, 2)
        let k1 = ArrayD::from_shape_fn(IxDyn(&shape), |ix| {
            (ix[0] * 1000 + ix[1] * 10 + ix[2]) as f32 + 1.0
        });
        let k2 = canonical_to_keras(&g, kp, &k1).unwrap();
        assert_eq!(k2.shape(), &[3, 5, 6, 2, 2, 4]);
        let mut connected = 0;
        for (c, i, j, kr, kc, f) in itertools6(3, 2, 4, 2, 3, 2) {
            let q = c * 6 + kr * 3 + kc;
            let (a, b) = ([c, i * 2 + kr, j + kc, f, i, j], [i * 4 + j, q, f]);
            assert_eq!(k2[a.as_slice()], k1[b.as_slice()]);
            connected += 1;
        }
        assert_eq!(connected, 3 * 96);
        assert_eq!(k2.iter().filter(|&&x| x != 0.0).count(), connected);
    }

    #[test]
    fn channels_first_bias_is_reshaped_not_transposed() {
        // §3.3: LC1D n=4, C=2, k=2, F=2 → L=3; Keras (3, 2) bias read as (F, L).
        for (df, input) in [
            (DataFormat::ChannelsFirst, [2, 4]),
            (DataFormat::ChannelsLast, [4, 2]),
        ] {
            let (g, _, bp) = lc_graph(&input, lc_op(&[2], &[1], &[1], Padding::Valid, df, 2, 1));
            let keras =
                ndarray::arr2(&[[100.0f32, 200.0], [300.0, 400.0], [500.0, 600.0]]).into_dyn();
            let canon = keras_to_canonical(&g, bp, keras.clone()).unwrap();
            let want = match df {
                DataFormat::ChannelsFirst => {
                    ndarray::arr2(&[[100.0f32, 200.0, 300.0], [400.0, 500.0, 600.0]]).into_dyn()
                }
                DataFormat::ChannelsLast => keras.clone(),
            };
            assert_eq!(canon, want);
            assert_eq!(canonical_to_keras(&g, bp, &canon).unwrap(), keras);
        }
    }

    #[test]
    fn other_weights_are_identity_and_shapes_are_checked() {
        let mut g = Graph::new("t");
        let x = g.add_input("x", vec![5]).unwrap();
        let d = Dense {
            units: 3,
            activation: Activation::Linear,
            use_bias: true,
            kernel_initializer: Initializer::Zeros,
            bias_initializer: Initializer::Zeros,
            options: WeightOptions::default(),
        };
        let id = g.add("d", Op::Dense(d), &[x]).unwrap();
        let kp = g.nodes[id].params[0];
        let w = ArrayD::from_shape_fn(IxDyn(&[5, 3]), |ix| (ix[0] * 3 + ix[1]) as f32);
        assert_eq!(keras_to_canonical(&g, kp, w.clone()).unwrap(), w);
        assert_eq!(canonical_to_keras(&g, kp, &w).unwrap(), w);
        let e = keras_to_canonical(&g, kp, ArrayD::zeros(IxDyn(&[3, 5]))).unwrap_err();
        assert!(
            e.contains("expected") && e.contains("[5, 3]") && e.contains("found [3, 5]"),
            "{e}"
        );
        assert!(keras_to_canonical(&g, 99, w)
            .unwrap_err()
            .contains("does not exist"));
        // Wrong shapes for an LC kernel, both directions; transposed (non-standard) input.
        let (g, kp, _) = lc_graph(
            &[6, 2],
            lc_op(
                &[3],
                &[1],
                &[1],
                Padding::Same,
                DataFormat::ChannelsLast,
                2,
                3,
            ),
        );
        let e = keras_to_canonical(&g, kp, ArrayD::zeros(IxDyn(&[6, 6, 2]))).unwrap_err();
        assert!(e.contains("found [6, 6, 2]"), "{e}");
        assert!(canonical_to_keras(&g, kp, &ArrayD::zeros(IxDyn(&[40]))).is_err());
        let (g, kp, _) = lc_graph(
            &[5, 2],
            lc_op(
                &[3],
                &[1],
                &[1],
                Padding::Valid,
                DataFormat::ChannelsLast,
                2,
                2,
            ),
        );
        let k2 = ArrayD::from_shape_fn(IxDyn(&[2, 3, 2, 5]), |ix| {
            ix.slice().iter().sum::<usize>() as f32
        });
        let t = k2.clone().permuted_axes(IxDyn(&[3, 2, 1, 0]));
        let std = t.as_standard_layout().into_owned();
        assert_eq!(
            keras_to_canonical(&g, kp, t).unwrap(),
            keras_to_canonical(&g, kp, std).unwrap()
        );
    }
}
