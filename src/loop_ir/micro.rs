//! Wide register tiles: the one loop-nest shape a [`LoopKind::Wide`] loop may head, and
//! the SIMD tiers past f32x4 that run it.
//!
//! A wide loop is a schedule choice like any other kind: it heads a *register-tile
//! reduction*,
//!
//! ```text
//! for r0 in 0..n0 wide(avx512)          // reduction loops: serial, unrolled or wide
//!   for r1 in 0..n1 unroll(16)
//!     for bb in 0..R unroll(R)          // rows of the tile (fully unrolled)
//!       for ff in 0..L vector(4)        // lanes of the tile
//!         acc[a·bb + ff + c] = fma(X[.. bb, r ..], W[.. ff, r ..], acc[a·bb + ff + c])
//! ```
//!
//! where `X` does not depend on the lane variable (one value broadcast to every lane)
//! and `W` is contiguous in it and independent of the row (one vector shared by every
//! row). The interpreter runs the nest as written and the f32x4 code generator runs it
//! as a serial loop; a code generator whose target has the tier runs the whole nest in
//! one machine-code microkernel with `tier.lanes()` lanes per register. Every output
//! element still sums the same products in the same order with one rounding per fused
//! multiply-add, so every executor gives the same bits. [`match_nest`] is the one
//! definition of the shape: the verifier rejects a wide loop it does not match, and the
//! code generator reads the nest only through it.

use std::fmt;

use super::{Affine, BufId, Expr, LocalId, LoopKind, Stmt, Var};

/// A SIMD tier wider than f32x4, for the register tiles of [`LoopKind::Wide`] loops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    /// x86-64 AVX2 with FMA: 8 f32 lanes per `ymm` register, 16 registers.
    Avx2,
    /// x86-64 AVX-512F: 16 f32 lanes per `zmm` register, 32 registers.
    Avx512,
}

impl Tier {
    /// f32 lanes per register.
    pub fn lanes(self) -> usize {
        match self {
            Tier::Avx2 => 8,
            Tier::Avx512 => 16,
        }
    }

    /// Vector registers.
    pub fn registers(self) -> usize {
        match self {
            Tier::Avx2 => 16,
            Tier::Avx512 => 32,
        }
    }

    /// The name printed in the loop IR and taken on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Tier::Avx2 => "avx2",
            Tier::Avx512 => "avx512",
        }
    }

    /// Registers a register tile of `rows` × `lanes` accumulators needs under this tier:
    /// the accumulators, one shared vector per lane register, and (AVX2, which has no
    /// broadcast operand on its multiply-add) one broadcast.
    pub fn tile_registers(self, rows: usize, lanes: usize) -> usize {
        let per_row = lanes / self.lanes();
        rows * per_row + per_row + usize::from(self == Tier::Avx2)
    }

    /// Whether a tile of `rows` × `lanes` runs under this tier: whole registers of lanes
    /// and every register of the tile held at once.
    pub fn fits(self, rows: usize, lanes: usize) -> bool {
        rows >= 1
            && lanes >= self.lanes()
            && lanes.is_multiple_of(self.lanes())
            && self.tile_registers(rows, lanes) <= self.registers()
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The schedule of a wide loop: the tier, and how far ahead of its reads the
/// microkernel asks the cache for the vector operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Wide {
    /// The SIMD tier.
    pub tier: Tier,
    /// Elements of the vector operand, past each one the nest reads, to prefetch into
    /// the L2 cache (0: none). A hint, not an access: it never faults and changes no
    /// value. The LC forward schedule gives the distance to the next output position's
    /// weights, so they stream from memory while this position's tile computes (the
    /// later batch tiles of a position read them from cache).
    pub prefetch: i64,
}

impl Wide {
    /// `tier` without prefetching.
    pub fn new(tier: Tier) -> Wide {
        Wide { tier, prefetch: 0 }
    }
}

impl fmt::Display for Wide {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.prefetch {
            0 => write!(f, "wide({})", self.tier),
            d => write!(f, "wide({}, prefetch {d:+})", self.tier),
        }
    }
}

/// One loop of a nest: its variable and trip count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NestLoop {
    /// Loop variable.
    pub var: Var,
    /// Trip count.
    pub extent: u64,
}

/// An operand of the multiply-add: `buf[at]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Operand {
    /// Buffer.
    pub buf: BufId,
    /// Element index (in the enclosing loops' and the nest's variables).
    pub at: Affine,
}

/// A wide loop's nest, as [`match_nest`] reads it.
#[derive(Clone, Debug, PartialEq)]
pub struct MicroNest {
    /// The tier the loop asks for.
    pub tier: Tier,
    /// Prefetch distance of the vector operand in elements (see [`Wide::prefetch`]).
    pub prefetch: i64,
    /// Reduction loops, outermost (the wide loop) first.
    pub reduction: Vec<NestLoop>,
    /// The tile's rows (a fully unrolled loop).
    pub rows: NestLoop,
    /// The tile's lanes (a `vector(4)` loop).
    pub lanes: NestLoop,
    /// The accumulator tile.
    pub local: LocalId,
    /// `acc[row_stride·row + lane + offset]`.
    pub local_at: Affine,
    /// The operand broadcast to every lane (independent of the lane variable).
    pub bcast: Operand,
    /// The operand loaded as a vector (contiguous in the lanes, independent of the row).
    pub vector: Operand,
}

impl MicroNest {
    /// Elements between consecutive rows of the accumulator tile.
    pub fn row_stride(&self) -> i64 {
        self.local_at.coef(self.rows.var)
    }

    /// Every variable the nest binds (reduction loops, rows, lanes).
    pub fn vars(&self) -> Vec<Var> {
        let mut v: Vec<Var> = self.reduction.iter().map(|l| l.var).collect();
        v.push(self.rows.var);
        v.push(self.lanes.var);
        v
    }

    /// `a` with every variable of the nest at 0: the index of the nest's first element,
    /// in the enclosing loops' variables only.
    pub fn outer(&self, a: &Affine) -> Affine {
        let vars = self.vars();
        let mut a = a.clone();
        a.terms.retain(|(v, _)| !vars.contains(v));
        a
    }
}

/// Reads the nest a [`LoopKind::Wide`] loop heads, or says why it is not a wide
/// register-tile reduction (the verifier's message).
pub fn match_nest(stmt: &Stmt) -> Result<MicroNest, String> {
    let Stmt::For {
        kind: LoopKind::Wide(wide),
        ..
    } = stmt
    else {
        return Err("not a wide loop".into());
    };
    let tier = &wide.tier;
    let mut loops = Vec::new();
    let mut at = stmt;
    let leaf = loop {
        match at {
            Stmt::For {
                var,
                extent,
                kind,
                body,
            } => {
                loops.push((
                    NestLoop {
                        var: *var,
                        extent: *extent,
                    },
                    *kind,
                ));
                match body.as_slice() {
                    [one] => at = one,
                    _ => {
                        return Err(
                            "a wide nest's loops must each hold exactly one statement".into()
                        )
                    }
                }
            }
            Stmt::SetLocal {
                local,
                index,
                value,
            } => break (*local, index, value),
            _ => return Err("a wide nest must end in one accumulator update".into()),
        }
    };
    let n = loops.len();
    if n < 3 {
        return Err("a wide nest needs a reduction loop, a row loop and a lane loop".into());
    }
    let (rows, rows_kind) = loops[n - 2];
    let (lanes, lanes_kind) = loops[n - 1];
    if rows_kind != LoopKind::Unroll(rows.extent as u32)
        || u64::from(rows.extent as u32) != rows.extent
    {
        return Err("a wide nest's row loop must be fully unrolled".into());
    }
    if lanes_kind != LoopKind::Vector(4) {
        return Err("a wide nest's lane loop must be vector(4)".into());
    }
    let reduction: Vec<NestLoop> = loops[..n - 2].iter().map(|l| l.0).collect();
    for (i, (_, k)) in loops[..n - 2].iter().enumerate() {
        let ok = match k {
            LoopKind::Wide(w) => i == 0 && w == wide,
            LoopKind::Serial | LoopKind::Unroll(_) => i > 0,
            LoopKind::Parallel | LoopKind::Vector(_) => false,
        };
        if !ok {
            return Err(
                "a wide nest's reduction loops must be serial or unrolled under the one wide loop"
                    .into(),
            );
        }
    }
    let (local, index, value) = leaf;
    let Expr::Fma(a, b, c) = value else {
        return Err("a wide nest's update must be a fused multiply-add".into());
    };
    if **c
        != (Expr::LoadLocal {
            local,
            index: index.clone(),
        })
    {
        return Err("a wide nest's update must add to the element it sets".into());
    }
    let only_tile = index
        .terms
        .iter()
        .all(|(v, _)| *v == rows.var || *v == lanes.var);
    let row_stride = index.coef(rows.var);
    if !only_tile || index.coef(lanes.var) != 1 {
        return Err("a wide nest's accumulator index must be a·row + lane + c".into());
    }
    if rows.extent > 1 && row_stride < lanes.extent as i64 {
        return Err("a wide nest's accumulator rows overlap".into());
    }
    let operand = |e: &Expr| match e {
        Expr::Load { buf, index } => Some(Operand {
            buf: *buf,
            at: index.clone(),
        }),
        _ => None,
    };
    let (Some(a), Some(b)) = (operand(a), operand(b)) else {
        return Err("a wide nest multiplies two buffer loads".into());
    };
    // `a·b` and `b·a` are the same IEEE product, so the operands may come in either
    // order.
    let (bcast, vector) = if a.at.coef(lanes.var) == 0 {
        (a, b)
    } else {
        (b, a)
    };
    if bcast.at.coef(lanes.var) != 0 {
        return Err("one operand of a wide nest must not depend on the lanes".into());
    }
    if vector.at.coef(lanes.var) != 1 || vector.at.coef(rows.var) != 0 {
        return Err("the other operand of a wide nest must be contiguous in the lanes and shared by the rows".into());
    }
    if !tier.fits(rows.extent as usize, lanes.extent as usize) {
        return Err(format!(
            "a {}x{} tile does not fit {} registers",
            rows.extent, lanes.extent, tier
        ));
    }
    Ok(MicroNest {
        tier: *tier,
        prefetch: wide.prefetch,
        reduction,
        rows,
        lanes,
        local,
        local_at: index.clone(),
        bcast,
        vector,
    })
}

/// Whether `stmt` sets every element of `nest`'s tile to `+0.0` (the tile's rows and
/// lanes loops around `acc[row_stride·row + lane + c] = 0.0`, the same elements the nest
/// accumulates into): a code generator running `stmt` right before the nest may start
/// the microkernel from zeroed registers instead of the stored tile.
pub fn zeroes_tile(stmt: &Stmt, nest: &MicroNest) -> bool {
    let Stmt::For {
        var: r,
        extent: rows,
        kind: LoopKind::Unroll(ru),
        body,
    } = stmt
    else {
        return false;
    };
    let [Stmt::For {
        var: l,
        extent: lanes,
        kind: LoopKind::Vector(4),
        body,
    }] = body.as_slice()
    else {
        return false;
    };
    let [Stmt::SetLocal {
        local,
        index,
        value: Expr::Const(z),
    }] = body.as_slice()
    else {
        return false;
    };
    let same_index = *index
        == Affine::var(*l)
            .plus_term(*r, nest.row_stride())
            .plus(nest.local_at.offset);
    *rows == nest.rows.extent
        && u64::from(*ru) == *rows
        && *lanes == nest.lanes.extent
        && *local == nest.local
        && z.to_bits() == 0
        && same_index
}
