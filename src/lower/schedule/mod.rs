//! Schedules as data: for each layer kind whose lowering has choices (vector axis,
//! register tile, channel blocking, parallel loop, unrolling, row merging), one file
//! that makes all of them ([`lc`] for the locally connected layers) and a plain struct
//! that the layer's emitter only follows. [`dense`] holds the register-tile choices of
//! Dense layers so far (their matrix-vector blocks are still chosen in `dense.rs`, and
//! only wide tiles record their text).
//!
//! Invariants: a schedule never changes what a kernel computes, only how (loop kinds,
//! tile shapes, loop order); every schedule's text (its `Display`) is stored on the
//! kernel it shaped ([`crate::loop_ir::Kernel::schedule`]) and printed in the loop IR.

pub mod dense;
pub mod lc;
