//! Expressions of the loop IR as CLIF values, scalar (`f32`) or, inside a vector loop,
//! lane-wise (`f32x4`), and the reads and writes of local tiles.
//!
//! Invariants: inside a vector loop every sub-expression is evaluated as `f32x4` (a load
//! with coefficient 1 on the vector variable is a vector load, coefficient 0 a scalar load
//! plus splat, another coefficient four scalar loads gathered into lanes in lane order,
//! a constant a splat), so lane `i` computes exactly what the interpreter
//! computes at vector-variable value `4g + i`. Local elements are Cranelift `Variable`s
//! whose index must be a compile-time constant here (else `Error::Internal`).

use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{types, InstBuilder, Value};

use super::emit::{ice, Emitter, Shape};
use super::math::Fx;
use super::prescan::LocalStore;
use crate::error::Result;
use crate::loop_ir::{Affine, BinOp, CmpOp, Expr, LocalId, UnOp};

impl<'f> Emitter<'_, 'f> {
    fn fx(&mut self, vector: bool) -> Fx<'_, 'f> {
        Fx {
            b: &mut self.b,
            vector,
            use_fma: self.use_fma,
        }
    }

    /// Evaluates `e` as `f32x4` (`vector`) or `f32`.
    pub(super) fn expr(&mut self, e: &Expr, vector: bool) -> Result<Value> {
        Ok(match e {
            Expr::Const(c) => self.fx(vector).k(*c),
            Expr::Load { buf, index } => {
                let shape = self.load_shape(index, vector)?;
                self.load(*buf, index, shape)?
            }
            Expr::LoadLocal { local, index } => self.get_local(*local, index, vector)?,
            Expr::Unary(op, a) => {
                let a = self.expr(a, vector)?;
                let mut fx = self.fx(vector);
                match op {
                    UnOp::Neg => fx.neg(a),
                    UnOp::Abs => fx.abs(a),
                    UnOp::Sqrt => fx.sqrt(a),
                    UnOp::Relu => fx.relu(a),
                    UnOp::Exp => fx.exp(a),
                    UnOp::Log => fx.ln(a),
                    UnOp::Tanh => fx.tanh(a),
                    UnOp::Sigmoid => fx.sigmoid(a),
                    UnOp::Erf => fx.erf(a),
                    UnOp::RoundF16 => fx.round_f16(a),
                    UnOp::RoundBf16 => fx.round_bf16(a),
                }
            }
            Expr::Binary(op, a, b) => {
                // With a right operand that is a constant other than NaN, `max`/`min`
                // need no NaN fix-up: one `maxps`/`minps` (the fast path of relu6,
                // clipping and hard_sigmoid).
                let b_plain = matches!(**b, Expr::Const(c) if !c.is_nan());
                let a = self.expr(a, vector)?;
                let b = self.expr(b, vector)?;
                let mut fx = self.fx(vector);
                match op {
                    BinOp::Add => fx.add(a, b),
                    BinOp::Sub => fx.sub(a, b),
                    BinOp::Mul => fx.mul(a, b),
                    BinOp::Div => fx.div(a, b),
                    BinOp::Max if b_plain => fx.max_nan_free(a, b),
                    BinOp::Min if b_plain => fx.min_nan_free(a, b),
                    BinOp::Max => fx.max(a, b),
                    BinOp::Min => fx.min(a, b),
                }
            }
            Expr::Fma(a, b, c) => {
                let a = self.expr(a, vector)?;
                let b = self.expr(b, vector)?;
                let c = self.expr(c, vector)?;
                self.fx(vector).fma(a, b, c)
            }
            Expr::Select { cmp, a, b, t, f } => {
                let a = self.expr(a, vector)?;
                let b = self.expr(b, vector)?;
                let t = self.expr(t, vector)?;
                let f = self.expr(f, vector)?;
                let cc = match cmp {
                    CmpOp::Lt => FloatCC::LessThan,
                    CmpOp::Le => FloatCC::LessThanOrEqual,
                    CmpOp::Gt => FloatCC::GreaterThan,
                    CmpOp::Ge => FloatCC::GreaterThanOrEqual,
                };
                self.fx(vector).sel(cc, a, b, t, f)
            }
        })
    }

    /// Shape of a buffer or local read: scalar outside vector loops; inside, vector lanes
    /// for coefficient 1 on the vector variable, a splat for coefficient 0, strided lanes
    /// (a gather; buffers only) for any other.
    fn load_shape(&self, index: &Affine, vector: bool) -> Result<Shape> {
        if !vector {
            return Ok(Shape::Scalar);
        }
        let v = self
            .vector_var
            .ok_or_else(|| ice(self.kernel, "vector expression outside a vector loop"))?;
        match index.coef(v) {
            0 => Ok(Shape::Splat),
            1 => Ok(Shape::Vector),
            c => Ok(Shape::Strided(c)),
        }
    }

    /// The constant element index of a local access.
    fn local_index(&self, local: LocalId, index: &Affine) -> Result<i64> {
        let (terms, c) = self.split(index)?;
        if !terms.is_empty() {
            return Err(ice(
                self.kernel,
                format!("index of local {local} is not a compile-time constant"),
            ));
        }
        Ok(c)
    }

    /// `(group variable, lane)` of element `e` of a grouped local.
    fn group_of(&self, local: LocalId, e: i64) -> Result<(Option<usize>, i64)> {
        match self.locals.get(local as usize) {
            Some(LocalStore::Groups { shift, .. }) => {
                let p = e + shift;
                Ok((Some(usize::try_from(p / 4).unwrap_or(usize::MAX)), p % 4))
            }
            Some(LocalStore::Scalar(_)) => Ok((None, e)),
            None => Err(ice(self.kernel, format!("local {local} does not exist"))),
        }
    }

    fn local_var(&self, local: LocalId, slot: usize) -> Result<cranelift_frontend::Variable> {
        let vars = match self.locals.get(local as usize) {
            Some(LocalStore::Groups { vars, .. }) | Some(LocalStore::Scalar(vars)) => vars,
            None => return Err(ice(self.kernel, format!("local {local} does not exist"))),
        };
        vars.get(slot)
            .copied()
            .ok_or_else(|| ice(self.kernel, format!("local {local} element out of range")))
    }

    /// Reads a local: a whole group, one lane (extracted, splat in vector shape) or a
    /// scalar variable.
    fn get_local(&mut self, local: LocalId, index: &Affine, vector: bool) -> Result<Value> {
        let shape = self.load_shape(index, vector)?;
        if let Shape::Strided(c) = shape {
            return Err(ice(
                self.kernel,
                format!("local {local} read with lanes {c} elements apart"),
            ));
        }
        let e = self.local_index(local, index)?;
        let (group, lane) = self.group_of(local, e)?;
        let scalar = match (group, shape) {
            (Some(g), Shape::Vector) => {
                if lane != 0 {
                    return Err(ice(
                        self.kernel,
                        format!("misaligned vector read of local {local}"),
                    ));
                }
                let var = self.local_var(local, g)?;
                return Ok(self.b.use_var(var));
            }
            (None, Shape::Vector) => {
                return Err(ice(
                    self.kernel,
                    format!("local {local} has no vector layout"),
                ))
            }
            (Some(g), _) => {
                let var = self.local_var(local, g)?;
                let v = self.b.use_var(var);
                self.b.ins().extractlane(v, lane as u8)
            }
            (None, _) => {
                let var = self.local_var(local, usize::try_from(e).unwrap_or(usize::MAX))?;
                self.b.use_var(var)
            }
        };
        Ok(match shape {
            Shape::Splat => self.b.ins().splat(types::F32X4, scalar),
            _ => scalar,
        })
    }

    /// Writes `v` (already in `shape`) to a local.
    pub(super) fn set_local(
        &mut self,
        local: LocalId,
        index: &Affine,
        shape: Shape,
        v: Value,
    ) -> Result<()> {
        let e = self.local_index(local, index)?;
        let (group, lane) = self.group_of(local, e)?;
        match (group, shape) {
            (Some(g), Shape::Vector) if lane == 0 => {
                let var = self.local_var(local, g)?;
                self.b.def_var(var, v);
            }
            (Some(g), Shape::Scalar) => {
                let var = self.local_var(local, g)?;
                let old = self.b.use_var(var);
                let new = self.b.ins().insertlane(old, v, lane as u8);
                self.b.def_var(var, new);
            }
            (None, Shape::Scalar) => {
                let var = self.local_var(local, usize::try_from(e).unwrap_or(usize::MAX))?;
                self.b.def_var(var, v);
            }
            _ => {
                return Err(ice(
                    self.kernel,
                    format!("local {local} written with an incompatible layout"),
                ))
            }
        }
        Ok(())
    }
}
