//! lcjit: compile Keras locally connected layer graphs to native code.
//!
//! See the README for the supported layers and files.
#![deny(missing_docs)]

pub mod error;
pub mod frontend;
pub mod graph;
pub mod io;
pub mod reference;

pub use error::{Error, Result};
