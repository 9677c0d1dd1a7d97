//! [`History`]: what `fit` returns, Keras's `History.history` — an ordered dict from
//! each logged key to its values per epoch — plus the epochs recorded, why training
//! stopped, and the warnings callbacks gave.
//!
//! Recording follows Keras's `History.on_epoch_end` (`setdefault(k, []).append(v)` for
//! every key of the epoch's logs), so keys keep their first-seen order (`loss`, metrics,
//! `val_loss`, `val_` metrics, then keys callbacks add such as `lr`) and a key that
//! appears late has fewer values than `loss`.

use super::format::python_float;
use super::Logs;
use crate::error::{Error, Result};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;
use std::io::Write;
use std::path::Path;

/// Per-epoch results of `fit`, as Keras's `History`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    entries: Vec<(String, Vec<f64>)>,
    epochs: Vec<usize>,
    /// Why training stopped before its last epoch, if a callback stopped it (the reason
    /// the callback gave, e.g. EarlyStopping's or TerminateOnNaN's).
    pub stopped: Option<String>,
    /// Warnings reported during training (a monitor that is never logged…).
    pub warnings: Vec<String>,
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        History::default()
    }

    /// Appends one epoch's logs (Keras's `History.on_epoch_end`).
    pub fn record(&mut self, epoch: usize, logs: &Logs) {
        self.epochs.push(epoch);
        for (k, v) in logs.iter() {
            match self.entries.iter_mut().find(|(key, _)| key == k) {
                Some((_, vals)) => vals.push(v),
                None => self.entries.push((k.to_string(), vec![v])),
            }
        }
    }

    /// A history of `entries` (each key with its values, in Keras's order) over
    /// `epochs`, as a resume state keeps it.
    pub fn from_parts(entries: Vec<(String, Vec<f64>)>, epochs: Vec<usize>) -> History {
        History {
            entries,
            epochs,
            stopped: None,
            warnings: Vec::new(),
        }
    }

    /// The values of `key` per epoch, if it was ever logged.
    pub fn get(&self, key: &str) -> Option<&[f64]> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_slice())
    }

    /// The training loss per epoch (regularization included); empty before any epoch.
    pub fn loss(&self) -> &[f64] {
        self.get("loss").unwrap_or(&[])
    }

    /// The keys in Keras's order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.as_str())
    }

    /// `(key, values)` in Keras's order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[f64])> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    /// The epochs recorded (0-based; Keras's `History.epoch`).
    pub fn epochs(&self) -> &[usize] {
        &self.epochs
    }

    /// Number of epochs recorded.
    pub fn len(&self) -> usize {
        self.epochs.len()
    }

    /// Whether no epoch was recorded.
    pub fn is_empty(&self) -> bool {
        self.epochs.is_empty()
    }

    /// Keras's `history.history` as JSON text `{"loss": […], "val_loss": […], …}` in key
    /// order (written piece by piece with serde_json: its `Map` would sort the keys).
    /// Non-finite values become `null` (JSON has no NaN).
    pub fn to_json(&self) -> String {
        let mut out = String::from("{");
        for (i, (k, vals)) in self.entries.iter().enumerate() {
            let finite: Vec<Option<f64>> =
                vals.iter().map(|&v| v.is_finite().then_some(v)).collect();
            if i > 0 {
                out.push_str(", ");
            }
            // Serializing a string and a vector of options cannot fail.
            out.push_str(&serde_json::to_string(k).unwrap_or_default());
            out.push_str(": ");
            out.push_str(&serde_json::to_string(&finite).unwrap_or_default());
        }
        out.push('}');
        out
    }

    /// Reads [`History::to_json`]'s text (or Keras's `json.dump(history.history)`) back:
    /// every key with its values (`null` as NaN), in the file's order.
    pub fn from_json(text: &str, source_name: &str) -> Result<History> {
        let bad = |d: String| Error::Config {
            source_name: source_name.to_string(),
            detail: d,
        };
        let mut h = History::new();
        // serde_json's Map sorts keys; walk the text's object with a visitor instead.
        let pairs: KeyOrder = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        for (k, v) in pairs.0 {
            let vals = v
                .as_array()
                .ok_or_else(|| bad(format!("history key '{k}' is not a list")))?
                .iter()
                .map(|x| x.as_f64().unwrap_or(f64::NAN))
                .collect::<Vec<_>>();
            h.entries.push((k, vals));
        }
        h.epochs = (0..h.loss().len()).collect();
        Ok(h)
    }

    /// A table: a header `epoch,<keys in order>`, then one row per epoch (values as
    /// Python prints floats; `NA` where a key has no value for that epoch).
    pub fn to_csv(&self) -> String {
        let mut out = String::from("epoch");
        for (k, _) in &self.entries {
            out.push(',');
            out.push_str(k);
        }
        out.push('\n');
        for (row, epoch) in self.epochs.iter().enumerate() {
            out.push_str(&epoch.to_string());
            for (_, vals) in &self.entries {
                // A key first logged late has its values at the end of the epochs.
                let offset = self.epochs.len() - vals.len();
                let v = row.checked_sub(offset).and_then(|i| vals.get(i));
                out.push(',');
                out.push_str(&v.map_or("NA".to_string(), |&v| python_float(v)));
            }
            out.push('\n');
        }
        out
    }

    /// Writes the history, chosen by extension: `.json` ([`History::to_json`]), `.csv`
    /// ([`History::to_csv`]) or `.npy` (the loss alone, float32). Atomic.
    pub fn write(&self, path: &Path) -> Result<()> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        match ext.as_str() {
            "json" => {
                let text = self.to_json();
                crate::io::write_atomic(path, |w| writeln!(w, "{text}"))
            }
            "csv" => {
                let text = self.to_csv();
                crate::io::write_atomic(path, |w| w.write_all(text.as_bytes()))
            }
            "npy" => {
                let loss: Vec<f32> = self.loss().iter().map(|&v| v as f32).collect();
                let arr = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[loss.len()]), loss)
                    .map_err(|e| Error::internal(e.to_string()))?;
                crate::io::write_npy(path, &arr)
            }
            _ => Err(Error::UnsupportedFile {
                path: path.to_path_buf(),
                expected: ".json, .csv or .npy",
            }),
        }
    }
}

/// A JSON object's entries in the order of the text.
struct KeyOrder(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for KeyOrder {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyOrder;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object of lists")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<KeyOrder, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, Value>()? {
                    out.push((k, v));
                }
                Ok(KeyOrder(out))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_keys_in_first_seen_order() {
        let mut h = History::new();
        let mut l = Logs::new();
        l.set("loss", 1.0);
        l.set("val_loss", 2.0);
        h.record(0, &l);
        l.set("loss", 0.5);
        l.set("lr", 0.01f32 as f64);
        h.record(1, &l);
        assert_eq!(h.keys().collect::<Vec<_>>(), ["loss", "val_loss", "lr"]);
        assert_eq!(h.loss(), [1.0, 0.5]);
        assert_eq!(h.get("lr").map(<[f64]>::len), Some(1));
        assert_eq!(h.epochs(), [0, 1]);
        let j = h.to_json();
        assert_eq!(
            j,
            r#"{"loss": [1.0,0.5], "val_loss": [2.0,2.0], "lr": [0.009999999776482582]}"#
        );
        let back = History::from_json(&j, "h.json").expect("parse");
        assert_eq!(back.keys().collect::<Vec<_>>(), ["loss", "val_loss", "lr"]);
        assert_eq!(back.get("lr"), h.get("lr"));
        assert_eq!(
            h.to_csv(),
            "epoch,loss,val_loss,lr\n0,1.0,2.0,NA\n1,0.5,2.0,0.009999999776482582\n"
        );
    }
}
