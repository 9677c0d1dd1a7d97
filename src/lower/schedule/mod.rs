//! Schedules as data: for each layer kind whose lowering has choices (vector axis,
//! register tile, channel blocking, parallel loop, unrolling, row merging), one file
//! that makes all of them ([`lc`] for the locally connected layers) and a plain struct
//! that the layer's emitter only follows.
//!
//! Invariants: a schedule never changes what a kernel computes, only how (loop kinds,
//! tile shapes, loop order); every schedule's text (its `Display`) is stored on the
//! kernel it shaped ([`crate::loop_ir::Kernel::schedule`]) and printed in the loop IR.

pub mod lc;
