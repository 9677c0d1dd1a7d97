//! [`CallbackState`]: what a stateful callback carries across an interrupted `fit` (the
//! counters, best values and saved weights Keras keeps on the callback object), so that
//! the resumed run decides exactly as the uninterrupted one would.
//!
//! A state is a named kind (the callback's class, checked on resume), scalar fields by
//! name and arrays (EarlyStopping's best weights). Floats are kept as values and written
//! by their bits (see `crate::io::resume`), so ±∞ and NaN survive and nothing rounds.
//! Invariant: a getter never panics; a missing or mistyped field is an
//! [`Error::Resume`] naming it.

use crate::error::{Error, Result};
use ndarray::ArrayD;

/// One scalar of a [`CallbackState`].
#[derive(Clone, Debug, PartialEq)]
pub enum StateValue {
    /// A count or index.
    Count(u64),
    /// A float, kept bit for bit.
    Float(f64),
    /// A yes/no.
    Flag(bool),
    /// A text.
    Text(String),
    /// A list of texts.
    Texts(Vec<String>),
    /// No value (a `None`).
    Absent,
}

/// The state of one callback at an interruption (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct CallbackState {
    /// The callback's class (`EarlyStopping`…); a resumed run refuses a state of another.
    pub kind: String,
    /// Scalars by name, in the order the callback set them.
    pub fields: Vec<(String, StateValue)>,
    /// Arrays, in the callback's order (`None`-able groups are marked by a field).
    pub arrays: Vec<ArrayD<f32>>,
}

impl CallbackState {
    /// An empty state of `kind`.
    pub fn new(kind: impl Into<String>) -> Self {
        CallbackState {
            kind: kind.into(),
            fields: Vec::new(),
            arrays: Vec::new(),
        }
    }

    /// Sets field `name` (replacing an earlier value).
    pub fn set(&mut self, name: &str, value: StateValue) -> &mut Self {
        match self.fields.iter_mut().find(|(k, _)| k == name) {
            Some(f) => f.1 = value,
            None => self.fields.push((name.to_string(), value)),
        }
        self
    }

    /// Field `name`, or an error naming it.
    pub fn get(&self, name: &str) -> Result<&StateValue> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
            .ok_or_else(|| Error::resume(name, "missing"))
    }

    fn wrong(name: &str, want: &str) -> Error {
        Error::resume(name, format!("is not {want}"))
    }

    /// Field `name` as a count.
    pub fn count(&self, name: &str) -> Result<usize> {
        match self.get(name)? {
            StateValue::Count(n) => {
                usize::try_from(*n).map_err(|_| Self::wrong(name, "a count of this machine"))
            }
            _ => Err(Self::wrong(name, "a count")),
        }
    }

    /// Field `name` as a count or absent.
    pub fn opt_count(&self, name: &str) -> Result<Option<usize>> {
        match self.get(name)? {
            StateValue::Absent => Ok(None),
            _ => self.count(name).map(Some),
        }
    }

    /// Field `name` as a float.
    pub fn float(&self, name: &str) -> Result<f64> {
        match self.get(name)? {
            StateValue::Float(v) => Ok(*v),
            _ => Err(Self::wrong(name, "a float")),
        }
    }

    /// Field `name` as a flag.
    pub fn flag(&self, name: &str) -> Result<bool> {
        match self.get(name)? {
            StateValue::Flag(v) => Ok(*v),
            _ => Err(Self::wrong(name, "true or false")),
        }
    }

    /// Field `name` as a text.
    pub fn text(&self, name: &str) -> Result<&str> {
        match self.get(name)? {
            StateValue::Text(v) => Ok(v),
            _ => Err(Self::wrong(name, "a text")),
        }
    }

    /// Field `name` as a list of texts, or absent.
    pub fn opt_texts(&self, name: &str) -> Result<Option<&[String]>> {
        match self.get(name)? {
            StateValue::Texts(v) => Ok(Some(v)),
            StateValue::Absent => Ok(None),
            _ => Err(Self::wrong(name, "a list of texts")),
        }
    }

    /// Checks the `config` field against this run's callback configuration (as text):
    /// a resumed run must decide with the interrupted run's patience, thresholds, files.
    pub fn expect_config(&self, config: &str) -> Result<()> {
        let kept = self.text("config")?;
        if kept == config {
            Ok(())
        } else {
            Err(Error::resume(
                "config",
                format!("the state was written for {kept}, this run has {config}"),
            ))
        }
    }

    /// Checks that the state is of `kind` (what a callback's resume does first).
    pub fn expect_kind(&self, kind: &str) -> Result<()> {
        if self.kind == kind {
            Ok(())
        } else {
            Err(Error::resume(
                "kind",
                format!("a state of {}, this run's callback is {kind}", self.kind),
            ))
        }
    }
}
