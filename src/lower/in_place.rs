//! The optimizer update fused into the backward pass of a training program (issue 12,
//! item 4): the kernel that completes a parameter's gradient applies the optimizer's rule
//! to each element right away, so the gradient is never written out and read back.
//!
//! The rule itself (its element program, in the host update's operation order) belongs to
//! the trainer (`crate::train::update`); this module only defines what a lowering needs
//! from it ([`InPlaceRule`]) and how the program's buffers change for an updated
//! parameter ([`Cx::update_in_place`]):
//! - the parameter's buffer becomes [`BufRole::Updated`] (read by the forward pass,
//!   written by the backward kernel), and each slot the rule keeps gets a
//!   [`BufRole::Slot`] buffer; both are bound to the caller's storage for each run;
//! - the step's scalars are one [`BufRole::Hyper`] buffer shared by every parameter;
//! - the parameter's [`BufRole::GradParam`] buffer is emptied (length 0): the run returns
//!   no gradient for it.
//!
//! Invariants:
//! - only a lowering that writes the parameter's whole gradient, and updates every
//!   element exactly once from its final value, may ask for the update; every other
//!   reader of the parameter (forward pass, `dx` of the same layer) runs before that
//!   kernel;
//! - a parameter the rule does not accept ([`InPlaceRule::accepts`]: not trainable, a
//!   regularizer adds to its gradient, a norm clip needs the whole gradient first…) keeps
//!   its gradient buffer and is updated by the separate update program.

use super::Cx;
use crate::error::{Error, Result};
use crate::graph::{NodeId, ParamId};
use crate::loop_ir::{Affine, BufId, BufRole, Buffer, KernelBuilder, Stmt};

/// The buffers of one parameter's in-place update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpdateBufs {
    /// The step's scalars ([`BufRole::Hyper`]).
    pub hyper: BufId,
    /// The parameter ([`BufRole::Updated`]).
    pub w: BufId,
    /// The slots the rule keeps, in its slot order ([`BufRole::Slot`]).
    pub slots: [Option<BufId>; 3],
}

/// An optimizer rule a backward kernel applies elementwise once an element's gradient is
/// final. Implementations compute exactly what the separate update program computes, so
/// fusing changes where the update runs, never its bits.
pub trait InPlaceRule: std::fmt::Debug + Send + Sync {
    /// Whether graph parameter `p` may be updated by its backward kernel.
    fn accepts(&self, p: ParamId) -> bool;
    /// The name of each slot the rule keeps (`None`: a slot it does not use).
    fn slots(&self) -> [Option<&'static str>; 3];
    /// Length of the hyper buffer.
    fn hyper_len(&self) -> usize;
    /// The statements that update element `w_ix` of the parameter (and of its slots)
    /// from its gradient `grad[g_ix]`; `lane` indexes the lanes of vector locals (the
    /// statements run inside a `Vector(4)` loop over it, or with `lane` 0 in a serial
    /// loop).
    fn element(
        &self,
        kb: &mut KernelBuilder,
        bufs: &UpdateBufs,
        grad: (BufId, Affine),
        w_ix: Affine,
        lane: Affine,
    ) -> Result<Vec<Stmt>>;
    /// Text that tells rules apart (a program cache key; asked once per step).
    fn key(&self) -> &str;
}

impl Cx<'_> {
    /// The buffers for updating `node`'s parameter `name` in place, if the program fuses
    /// an update ([`Cx::in_place`]) and its rule accepts the parameter; the parameter's
    /// gradient buffer is then emptied and counts as written. The caller must follow the
    /// module's invariants.
    pub fn update_in_place(&mut self, node: NodeId, name: &str) -> Result<Option<UpdateBufs>> {
        let Some(rule) = self.in_place else {
            return Ok(None);
        };
        let p = self.param_id(node, name)?;
        let spec = &self.graph.params[p];
        if !spec.trainable || spec.node != node || !rule.accepts(p) {
            return Ok(None);
        }
        let (dp, _) = *self
            .dparam_bufs
            .get(p)
            .ok_or_else(|| Error::internal("in-place update outside a gradient program"))?;
        // The layer must read the parameter's own buffer (a mixed-precision layer reads a
        // rounded copy, which the update would not reach).
        let w = self.param_bufs[p];
        let own = self
            .buffers
            .get(w as usize)
            .is_some_and(|b| b.role == BufRole::Param(p));
        if !own {
            return Ok(None);
        }
        let hyper = match self.hyper {
            Some(h) => h,
            None => {
                self.buffers
                    .push(Buffer::new("hyper", rule.hyper_len(), BufRole::Hyper));
                let h = (self.buffers.len() - 1) as BufId;
                self.hyper = Some(h);
                h
            }
        };
        let len = self.buffers[w as usize].len;
        self.buffers[w as usize].role = BufRole::Updated(p);
        let mut slots = [None; 3];
        for (j, (slot, name)) in slots.iter_mut().zip(rule.slots()).enumerate() {
            if let Some(name) = name {
                let full = format!("{}.{name}", self.buffers[w as usize].name);
                self.buffers
                    .push(Buffer::new(full, len, BufRole::Slot(p, j)));
                *slot = Some((self.buffers.len() - 1) as BufId);
            }
        }
        self.buffers[dp as usize].len = 0;
        self.dparam_bufs[p].1 = true;
        self.updated[p] = true;
        Ok(Some(UpdateBufs { hyper, w, slots }))
    }
}
