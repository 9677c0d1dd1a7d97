//! Transposes: a matrix (the Dense backward pass's operands, the LC forward pass's input
//! under lanes over batch rows, `xT[e·B + b]`) and each sample's matrix (a channels_first
//! LC input read in channels_last order).
//!
//! Invariant: copies only, so every element moves exactly; the rows of a column go four
//! at a time into one vector store (gathered loads), with a scalar tail.

use crate::loop_ir::{for_, lanes_with_tail, load, Affine, BufId, KernelBuilder, LoopKind, Stmt};
use crate::lower::Cx;

/// Pushes the kernel `name` writing the `r × c` row-major matrix `src` transposed into a
/// new temporary (`c × r`), and returns it: parallel over the columns of `src`, the loop
/// variables named `vars` (columns, rows). The Dense backward pass's operands and the
/// LC forward pass's input under lanes over batch rows (`xT[e·B + b]`).
pub(in crate::lower) fn transposed(
    cx: &mut Cx,
    name: &str,
    src: BufId,
    r: usize,
    c: usize,
    vars: [&str; 2],
) -> BufId {
    let dst = cx.temp(r * c);
    transpose_into(cx, name, [src, dst], r, c, vars);
    dst
}

/// Pushes the kernel `name` writing the `r × c` row-major matrix `src` transposed into
/// `dst` (`c × r`), as [`transposed`].
pub(in crate::lower) fn transpose_into(
    cx: &mut Cx,
    name: &str,
    [src, dst]: [BufId; 2],
    r: usize,
    c: usize,
    vars: [&str; 2],
) {
    let mut kb = KernelBuilder::new(name);
    let (j, i) = (kb.var(vars[0]), kb.var(vars[1]));
    let tail = kb.var(&format!("{}_t", vars[1]));
    let store = Stmt::Store {
        buf: dst,
        index: Affine::var(j).scale(r as i64).plus_term(i, 1),
        value: load(src, Affine::var(i).scale(c as i64).plus_term(j, 1)),
    };
    let nest = for_(
        j,
        c as u64,
        LoopKind::Parallel,
        lanes_with_tail(i, tail, r, vec![store]),
    );
    cx.push(kb.finish(vec![nest]), &[src], &[dst]);
}

/// Pushes the kernel `name` writing each of the `batch` samples of `src`, an `r × c`
/// row-major matrix, transposed (`c × r`) into a new temporary, and returns it: parallel
/// over the columns, then the samples, then the rows in lanes. A channels_first
/// `(C, S)` sample becomes channels_last `(S, C)`.
pub(in crate::lower) fn transposed_per_sample(
    cx: &mut Cx,
    name: &str,
    src: BufId,
    batch: usize,
    r: usize,
    c: usize,
) -> BufId {
    let n = (r * c) as i64;
    let dst = cx.temp(batch * r * c);
    let mut kb = KernelBuilder::new(name);
    let (j, b, i) = (kb.var("s"), kb.var("b"), kb.var("c"));
    let tail = kb.var("c_t");
    let store = Stmt::Store {
        buf: dst,
        index: Affine::var(b)
            .scale(n)
            .plus_term(j, r as i64)
            .plus_term(i, 1),
        value: load(
            src,
            Affine::var(b)
                .scale(n)
                .plus_term(i, c as i64)
                .plus_term(j, 1),
        ),
    };
    let nest = for_(
        j,
        c as u64,
        LoopKind::Parallel,
        vec![for_(
            b,
            batch as u64,
            LoopKind::Serial,
            lanes_with_tail(i, tail, r, vec![store]),
        )],
    );
    cx.push(kb.finish(vec![nest]), &[src], &[dst]);
    dst
}
