//! The random single LC layers of the small- and odd-filter schedule tests
//! (`lc_small_filters.rs`, forward; `lc_small_filters_grad.rs`, gradients): F ∈ 1..9,
//! channels_first and channels_last, strides, dilation, `same`/`valid`, 1D and 2D, rows
//! long enough that the position lanes, the guarded head and the tail all occur.

use super::uniform;
use lcjit::graph::{Activation, DataFormat, Graph, LocallyConnected, Op, Padding, WeightOptions};
use proptest::prelude::*;

/// One LC layer: `(rank, channels_last, spatial, channels, filters, kernel, stride,
/// dilation, same, bias)`.
#[derive(Clone, Debug)]
pub struct Spec {
    pub rank: usize,
    pub cl: bool,
    pub spatial: Vec<usize>,
    pub c: usize,
    pub f: usize,
    pub k: usize,
    pub s: usize,
    pub d: usize,
    pub same: bool,
    pub bias: bool,
}

/// The drawn parts of a [`Spec`]: `(rank, channels_last, (length of a 1-D input, side
/// of a 2-D one), channels, filters, kernel, stride, dilation, same, bias)`.
pub type Parts = (
    usize,
    bool,
    (usize, usize),
    usize,
    usize,
    usize,
    usize,
    usize,
    bool,
    bool,
);

impl Spec {
    /// The layer of `parts` (a 2-D input is `side × (side + 1)`).
    pub fn from_parts((rank, cl, (n1, n2), c, f, k, s, d, same, bias): Parts) -> Spec {
        Spec {
            rank,
            cl,
            spatial: if rank == 1 {
                vec![n1]
            } else {
                vec![n2, n2 + 1]
            },
            c,
            f,
            k,
            s,
            d,
            same,
            bias,
        }
    }
}

pub fn graph(sp: &Spec) -> Option<Graph> {
    let df = if sp.cl {
        DataFormat::ChannelsLast
    } else {
        DataFormat::ChannelsFirst
    };
    let mut shape = sp.spatial.clone();
    if sp.cl {
        shape.push(sp.c);
    } else {
        shape.insert(0, sp.c);
    }
    let mut g = Graph::new("small_f");
    let x = g.add_input("x", shape).ok()?;
    let lc = Op::LocallyConnected(LocallyConnected {
        rank: sp.rank,
        filters: sp.f,
        kernel: vec![sp.k; sp.rank],
        strides: vec![sp.s; sp.rank],
        dilation: vec![sp.d; sp.rank],
        padding: if sp.same {
            Padding::Same
        } else {
            Padding::Valid
        },
        data_format: df,
        activation: if sp.f.is_multiple_of(2) {
            Activation::Tanh
        } else {
            Activation::Linear
        },
        use_bias: sp.bias,
        implementation: if sp.same { 2 } else { 1 },
        kernel_initializer: uniform(-0.5, 0.5),
        bias_initializer: uniform(-0.5, 0.5),
        options: WeightOptions::default(),
    });
    let y = g.add("lc", lc, &[x]).ok()?;
    g.outputs = vec![y];
    Some(g)
}

/// The proptest strategy of [`Spec`].
pub fn spec() -> impl Strategy<Value = Spec> {
    (
        1usize..3,
        any::<bool>(),
        (6usize..48, 4usize..14),
        1usize..5,
        1usize..10,
        1usize..6,
        1usize..3,
        1usize..3,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(Spec::from_parts)
}
