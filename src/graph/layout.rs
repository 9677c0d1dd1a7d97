//! Conversion of weights between Keras file layouts and the canonical layout of the graph
//! IR (see the `graph` module docs), including LocallyConnected implementations 1, 2, 3.
//!
//! - LocallyConnected kernel: see [`super::layout_lc`] (implementation 1 is the canonical
//!   layout; 2 and 3 are gathered from / scattered to their connected entries).
//! - LocallyConnected bias: a plain row-major reshape between Keras's `(out…, F)` and the
//!   canonical per-sample output shape; for channels_first this is Keras's bias quirk
//!   (keras-lc-semantics §3.3), not a transpose.
//! - Every other weight: the canonical layout is the Keras layout (shape check only).

use super::layout_lc::LcGeometry;
use super::{Graph, Node, Op, ParamId, ParamSpec};
use ndarray::{ArrayD, IxDyn};

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
                            let configs: [(&[usize], &[usize], &[usize], &[usize]); 4] = [
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
}
