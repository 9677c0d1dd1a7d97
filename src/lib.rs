//! lcjit: compile Keras locally connected layer graphs to native code.
//!
//! Keras's `LocallyConnected1D`/`2D` layers are convolutions with a different filter bank
//! at every output position. lcjit loads models built around them from their Keras files
//! (JSON configs of every dialect, legacy `.h5`, `.keras`, weights in `.h5`/`.npz`),
//! represents them as a typed graph IR, and runs them. The reference path
//! ([`reference`]) is a naive per-layer implementation written from the Keras formulas:
//! the oracle for every faster engine.
//!
//! ```no_run
//! use lcjit::Model;
//! let mut model = Model::load("model.json")?;          // any Keras dialect
//! model.load_weights("weights.npz")?;                  // or a .h5
//! print!("{}", model.summary());
//! let x = lcjit::io::read_npy("x.npy".as_ref())?;
//! let y = model.predict(&x)?;
//! lcjit::io::write_npy("y.npy".as_ref(), &y)?;
//! # Ok::<(), lcjit::Error>(())
//! ```
#![deny(missing_docs)]

pub mod backend;
pub mod bench;
pub mod budget;
pub mod error;
pub mod frontend;
pub mod graph;
pub mod init;
pub mod interrupt;
pub mod io;
pub mod loop_ir;
pub mod lower;
pub mod model;
pub mod reference;
pub mod runtime;
pub mod save;
pub mod size;
pub mod train;
pub mod write_file;

pub use error::{Error, Result};
pub use model::{LoadOptions, Model, WeightsOrigin};
pub use runtime::{CompileOptions, CompiledModel, Engine, WideTier};
