//! The output gradient transposed for lanes over batch rows (the wide `dx` schedule,
//! see `schedule/lc/backward.rs::wide_input_grad`): `dzT[(p·F + f)·B + b] = dz[b, p, f]`,
//! so that consecutive batch rows of one output position and filter are one vector.
//! Invariant: a copy (every element moved exactly), so the gather reads the same values.

use crate::loop_ir::{for_, load, Affine, BufId, KernelBuilder, LoopKind, Stmt};
use crate::lower::lc::Geo;
use crate::lower::Cx;

/// Pushes the kernel `{name}.backward_dz_rows` writing `dz` transposed into a new
/// temporary, and returns it. Parallel over output positions; the batch loop gathers
/// four rows into one vector store when the batch allows.
pub(super) fn batch_rows(cx: &mut Cx, name: &str, g: &Geo, dz: BufId) -> BufId {
    let batch = cx.batch;
    let dzt = cx.temp(g.p * g.f * batch);
    let mut kb = KernelBuilder::new(format!("{name}.backward_dz_rows"));
    let (p, f, b) = (kb.var("p"), kb.var("f"), kb.var("b"));
    let store = Stmt::Store {
        buf: dzt,
        index: Affine::var(p)
            .scale((g.f * batch) as i64)
            .plus_term(f, batch as i64)
            .plus_term(b, 1),
        value: load(
            dz,
            g.z_index(&Affine::var(b), &Affine::var(p), &Affine::var(f)),
        ),
    };
    let rows = if batch.is_multiple_of(4) {
        LoopKind::Vector(4)
    } else {
        LoopKind::Serial
    };
    let nest = for_(
        p,
        g.p as u64,
        LoopKind::Parallel,
        vec![for_(
            f,
            g.f as u64,
            LoopKind::Serial,
            vec![for_(b, batch as u64, rows, vec![store])],
        )],
    );
    cx.push(kb.finish(vec![nest]), &[dz], &[dzt]);
    dzt
}
