//! Typed accessors over one layer's JSON configuration.
//!
//! Every accessor turns a wrong value into an [`Error::LayerConfig`] that names the
//! configuration source, the layer and the field, so that the front end never panics on
//! user data. `null` counts as absent everywhere (Keras writes `null` for "default").

use std::sync::LazyLock;

use serde_json::{Map, Value};

use super::Dialect;
use crate::error::{Error, Result};

/// Largest size (filters, units, kernel, stride, dimension…) accepted from a
/// configuration. Larger values are absurd and rejected before any arithmetic.
pub const MAX_SIZE: u64 = i32::MAX as u64;

static EMPTY: LazyLock<Map<String, Value>> = LazyLock::new(Map::new);

/// One layer's configuration together with what errors and dialect rules need.
#[derive(Clone, Copy)]
pub struct Cfg<'a> {
    /// Where the configuration came from (file name).
    pub src: &'a str,
    /// The layer name.
    pub layer: &'a str,
    /// The layer's `config` object.
    pub map: &'a Map<String, Value>,
    /// The dialect of the whole model.
    pub dialect: Dialect,
    /// The model's `keras_version`, if given.
    pub version: Option<&'a str>,
}

/// A short rendering of a JSON value for error messages.
pub fn show(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 60 {
        let mut end = 57;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &s[..end])
    } else {
        s
    }
}

impl<'a> Cfg<'a> {
    /// A configuration over `map` (or an empty one if `map` is `None`).
    pub fn new(
        src: &'a str,
        layer: &'a str,
        map: Option<&'a Map<String, Value>>,
        dialect: Dialect,
        version: Option<&'a str>,
    ) -> Self {
        Cfg {
            src,
            layer,
            map: map.unwrap_or(&EMPTY),
            dialect,
            version,
        }
    }

    /// The same layer context over another object (a nested initializer's config…).
    pub fn with_map(&self, map: &'a Map<String, Value>) -> Self {
        Cfg { map, ..*self }
    }

    /// A `LayerConfig` error about `field`.
    pub fn err(&self, field: &str, detail: impl Into<String>) -> Error {
        Error::LayerConfig {
            source_name: self.src.to_string(),
            layer: self.layer.to_string(),
            field: field.to_string(),
            detail: detail.into(),
        }
    }

    /// Re-labels an error of shared helpers (axis resolution…) as being about `field`.
    pub fn about(&self, field: &str, e: Error) -> Error {
        match e {
            Error::Shape { detail, .. } => self.err(field, detail),
            other => other,
        }
    }

    /// The value of `key`, `None` if absent or `null`.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// The first of `keys` that is present and not `null`, with its key.
    pub fn pick<'k>(&self, keys: &[&'k str]) -> Option<(&'k str, &'a Value)> {
        keys.iter().find_map(|k| self.get(k).map(|v| (*k, v)))
    }

    /// The first of `keys` that is present, or a "missing" error naming `keys[0]`.
    pub fn require<'k>(&self, keys: &[&'k str]) -> Result<(&'k str, &'a Value)> {
        self.pick(keys).ok_or_else(|| {
            let alt = if keys.len() > 1 {
                format!(" (also looked for {})", keys[1..].join(", "))
            } else {
                String::new()
            };
            self.err(
                keys.first().copied().unwrap_or("?"),
                format!("missing{alt}"),
            )
        })
    }

    /// An integer (an integral float such as `3.0` is accepted).
    pub fn int(&self, field: &str, v: &Value) -> Result<i64> {
        if let Some(i) = v.as_i64() {
            return Ok(i);
        }
        if v.as_u64().is_some() {
            return Err(self.err(field, format!("{} is too large", show(v))));
        }
        match v.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(f as i64),
            Some(_) => Err(self.err(field, format!("{} is not an integer", show(v)))),
            None => Err(self.err(field, format!("expected an integer, got {}", show(v)))),
        }
    }

    /// An integer in `lo..=MAX_SIZE`.
    fn bounded(&self, field: &str, v: &Value, lo: i64) -> Result<usize> {
        let i = self.int(field, v)?;
        if i < lo {
            return Err(self.err(field, format!("{i} must be >= {lo}")));
        }
        if i as u64 > MAX_SIZE {
            return Err(self.err(field, format!("{i} is absurdly large (limit {MAX_SIZE})")));
        }
        Ok(i as usize)
    }

    /// A size `>= 1`.
    pub fn size(&self, field: &str, v: &Value) -> Result<usize> {
        self.bounded(field, v, 1)
    }

    /// A count `>= 0` (paddings, croppings).
    pub fn count(&self, field: &str, v: &Value) -> Result<usize> {
        self.bounded(field, v, 0)
    }

    /// A required size under the first present of `keys`.
    pub fn req_size(&self, keys: &[&str]) -> Result<usize> {
        let (k, v) = self.require(keys)?;
        self.size(k, v)
    }

    /// A size under the first present of `keys`, or `default`.
    pub fn size_or(&self, keys: &[&str], default: usize) -> Result<usize> {
        match self.pick(keys) {
            Some((k, v)) => self.size(k, v),
            None => Ok(default),
        }
    }

    /// `rank` sizes from an integer (repeated) or a list of exactly `rank` integers.
    pub fn sizes(&self, field: &str, v: &Value, rank: usize) -> Result<Vec<usize>> {
        match v {
            Value::Array(items) => {
                if items.len() != rank {
                    return Err(
                        self.err(field, format!("expected {rank} entries, got {}", show(v)))
                    );
                }
                items.iter().map(|x| self.size(field, x)).collect()
            }
            _ => Ok(vec![self.size(field, v)?; rank]),
        }
    }

    /// A float (finite as an `f32`).
    pub fn float(&self, field: &str, v: &Value) -> Result<f32> {
        let f = v
            .as_f64()
            .ok_or_else(|| self.err(field, format!("expected a number, got {}", show(v))))?;
        let g = f as f32;
        if !g.is_finite() {
            return Err(self.err(field, format!("{f} is out of range for float32")));
        }
        Ok(g)
    }

    /// A float under `key`, or `default`.
    pub fn float_or(&self, key: &str, default: f32) -> Result<f32> {
        match self.get(key) {
            Some(v) => self.float(key, v),
            None => Ok(default),
        }
    }

    /// A boolean under the first present of `keys`, or `default`.
    pub fn bool_or(&self, keys: &[&str], default: bool) -> Result<bool> {
        match self.pick(keys) {
            Some((k, v)) => v
                .as_bool()
                .ok_or_else(|| self.err(k, format!("expected true or false, got {}", show(v)))),
            None => Ok(default),
        }
    }

    /// A string.
    pub fn string(&self, field: &str, v: &'a Value) -> Result<&'a str> {
        v.as_str()
            .ok_or_else(|| self.err(field, format!("expected a string, got {}", show(v))))
    }

    /// An integer or a one-element list of one integer (Keras axes).
    pub fn axis(&self, field: &str, v: &Value) -> Result<i64> {
        match v {
            Value::Array(items) if items.len() == 1 => self.int(field, &items[0]),
            Value::Array(_) => Err(self.err(
                field,
                format!("only a single axis is supported, got {}", show(v)),
            )),
            _ => self.int(field, v),
        }
    }

    /// An integer or a list of integers (constraint axes).
    pub fn axes(&self, field: &str, v: &Value) -> Result<Vec<i64>> {
        match v {
            Value::Array(items) => items.iter().map(|x| self.int(field, x)).collect(),
            _ => Ok(vec![self.int(field, v)?]),
        }
    }
}
