//! The naive reference path: per-layer forward passes on ndarray, from the Keras formulas.
