//! The resume-state file of an interrupted `lcjit fit` ([`crate::train::ResumeState`]):
//! one zip archive (uncompressed, like `numpy.savez`) holding `state.json` and the
//! arrays as `.npy` entries.
//!
//! `state.json` holds `"format": "lcjit-fit-resume"`, `"version": 1`, the fingerprint the
//! resuming run must match, the position, the generators' states, the accumulators, the
//! history, the warnings, the optimizer's scalars and which slots exist, and each
//! callback's fields. Floats are written as their bit patterns (f64 as a `u64`, f32 as a
//! `u32`), so every value — NaN and ±∞ included — comes back bit for bit. Arrays:
//! `params/<i>.npy`, `slots/<i>/<j>.npy` (parameter `i`, slot `j` of `a, b, c`),
//! `callbacks/<i>/<k>.npy`.
//!
//! Invariants: the file is written through [`crate::write_file`] (a temporary renamed into
//! place, removed on failure or on a signal); reading checks the file, `state.json` (at
//! [`super::JSON_PARSE_FACTOR`] times its size) and every array against the memory budget
//! before reading them; anything missing, mistyped or corrupt is an error naming the file
//! and the field ([`Error::Resume`]) or the entry ([`Error::Format`]), never a panic.

use crate::error::{Error, Result};
use crate::train::callbacks::{CallbackState, StateValue};
use crate::train::metrics::MetricSnapshot;
use crate::train::{EpochAccumulators, Fingerprint, History, OptimizerState, ResumeState};
use ndarray::ArrayD;
use ndarray_npy::WriteNpyExt;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{self, Write};
use std::path::Path;

/// The `format` of `state.json`.
const FORMAT: &str = "lcjit-fit-resume";
/// The version this lcjit writes and reads.
const VERSION: u64 = 1;
/// The format named in [`Error::Format`].
const KIND: &str = "lcjit resume state";

fn f64_bits(v: f64) -> Value {
    json!(v.to_bits())
}

fn f64_list(v: &[f64]) -> Value {
    Value::Array(v.iter().map(|&x| f64_bits(x)).collect())
}

/// Writes `state` to `path` (see the module docs).
pub fn write_resume_state(path: &Path, state: &ResumeState) -> Result<()> {
    let mut arrays: Vec<(String, &ArrayD<f32>)> = Vec::new();
    for (i, p) in state.params.iter().enumerate() {
        arrays.push((format!("params/{i}"), p));
    }
    let mut slots = Vec::new();
    for (i, s) in state.optimizer.slots.iter().enumerate() {
        for (j, a) in s.iter().enumerate() {
            if let Some(a) = a {
                arrays.push((format!("slots/{i}/{j}"), a));
            }
        }
        slots.push(json!([s[0].is_some(), s[1].is_some(), s[2].is_some()]));
    }
    let mut callbacks = Vec::new();
    for (i, c) in state.callbacks.iter().enumerate() {
        callbacks.push(match c {
            None => Value::Null,
            Some(c) => {
                for (k, a) in c.arrays.iter().enumerate() {
                    arrays.push((format!("callbacks/{i}/{k}"), a));
                }
                callback_json(c)
            }
        });
    }
    let opt = &state.optimizer;
    let acc = &state.accumulators;
    let metrics: Vec<Value> = acc
        .metrics
        .iter()
        .map(|m| {
            json!({
                "name": m.name,
                "resolution": m.resolution,
                "sum": f64_bits(m.sum),
                "count": f64_bits(m.count),
                "confusion": m.confusion.as_ref().map(|c| c.iter().map(|l| f64_list(l)).collect::<Vec<_>>()),
            })
        })
        .collect();
    let history: Vec<Value> = state
        .history
        .iter()
        .map(|(k, v)| json!([k, f64_list(v)]))
        .collect();
    let doc = json!({
        "format": FORMAT,
        "version": VERSION,
        "fingerprint": state.fingerprint.0.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
        "epoch": state.epoch,
        "shuffle_state": state.shuffle_state,
        "randomness": state.randomness,
        "params": state.params.len(),
        "optimizer": {
            "iterations": opt.iterations,
            "u_product": opt.u_product.to_bits(),
            "keras_trace": opt.keras_trace,
            "constant_learning_rate": opt.constant_learning_rate.map(f32::to_bits),
            "slots": slots,
        },
        "accumulators": {
            "steps_done": acc.steps_done,
            "loss_sum": f64_bits(acc.loss_sum),
            "loss_count": f64_bits(acc.loss_count),
            "metrics": metrics,
        },
        "history": { "entries": history, "epochs": state.history.epochs() },
        "warnings": state.warnings,
        "callbacks": callbacks,
    });
    let text = doc.to_string();
    super::write_atomic(path, |w| {
        let mut zip = zip::ZipWriter::new(w);
        let stored = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        zip.start_file("state.json", stored)
            .map_err(io::Error::other)?;
        zip.write_all(text.as_bytes())?;
        for (name, a) in &arrays {
            // Zip64 for an entry that may pass 4 GiB (a 4-byte float per element).
            let large = a.len().saturating_mul(4) >= u32::MAX as usize;
            zip.start_file(format!("{name}.npy"), stored.large_file(large))
                .map_err(io::Error::other)?;
            a.write_npy(&mut zip)
                .map_err(|e| io::Error::other(format!("writing entry '{name}': {e}")))?;
        }
        zip.finish().map_err(io::Error::other)?;
        Ok(())
    })
}

fn callback_json(c: &CallbackState) -> Value {
    let fields: Vec<Value> = c
        .fields
        .iter()
        .map(|(k, v)| {
            let v = match v {
                StateValue::Count(n) => json!({ "count": n }),
                StateValue::Float(x) => json!({ "float": x.to_bits() }),
                StateValue::Flag(b) => json!({ "flag": b }),
                StateValue::Text(t) => json!({ "text": t }),
                StateValue::Texts(t) => json!({ "texts": t }),
                StateValue::Absent => json!({ "absent": null }),
            };
            json!([k, v])
        })
        .collect();
    json!({ "kind": c.kind, "fields": fields, "arrays": c.arrays.len() })
}

/// Reads a resume state within the default memory budget.
pub fn read_resume_state(path: &Path) -> Result<ResumeState> {
    read_resume_state_within(path, crate::budget::default_memory_budget())
}

/// Reads a resume state written by [`write_resume_state`] within `budget` bytes.
pub fn read_resume_state_within(path: &Path, budget: u64) -> Result<ResumeState> {
    let (file, _) = super::open_regular(path, budget)?;
    let mut archive = zip::ZipArchive::new(io::BufReader::new(file))
        .map_err(|e| super::npy::zip_error(path, KIND, "reading the zip directory", e))?;
    let (text, json_need) = {
        let mut entry = archive
            .by_name("state.json")
            .map_err(|e| super::npy::zip_error(path, KIND, "entry 'state.json'", e))?;
        let need = u128::from(entry.size()) * u128::from(super::JSON_PARSE_FACTOR);
        if need > u128::from(budget) {
            return Err(Error::file_budget(path, "entry 'state.json'", need, budget));
        }
        let bytes = super::npy::read_entry(&mut entry)
            .map_err(|e| super::npy::io_in_archive(path, KIND, "entry 'state.json'", e))?;
        let text = String::from_utf8(bytes)
            .map_err(|_| Error::format(path, KIND, "entry 'state.json' is not UTF-8 text"))?;
        (text, u64::try_from(need).unwrap_or(u64::MAX))
    };
    let doc: Value = serde_json::from_str(&text)
        .map_err(|e| Error::format(path, KIND, format!("entry 'state.json': {e}")))?;
    drop(text);
    // The parsed JSON stays alive while the arrays are read.
    let rest = budget.saturating_sub(json_need);
    let arrays =
        super::npy::read_archive_arrays(path, KIND, &mut archive, rest, &|n| n != "state.json")?;
    let mut arrays: HashMap<String, ArrayD<f32>> = arrays.into_iter().collect();
    let f = Field {
        file: path.display().to_string(),
        path: String::new(),
        v: &doc,
    };
    let mut state = parse(&f, &mut arrays)?;
    state.source_name = f.file.clone();
    if let Some(extra) = arrays.keys().next() {
        return Err(f.err("arrays", format!("entry '{extra}.npy' belongs to no field")));
    }
    Ok(state)
}

/// A JSON value at a field path of `state.json`, with typed getters whose errors name
/// the file and the field.
struct Field<'a> {
    file: String,
    path: String,
    v: &'a Value,
}

impl<'a> Field<'a> {
    fn err(&self, sub: &str, detail: impl Into<String>) -> Error {
        let field = match (self.path.is_empty(), sub.is_empty()) {
            (true, _) => sub.to_string(),
            (false, true) => self.path.clone(),
            (false, false) => format!("{}.{sub}", self.path),
        };
        Error::Resume {
            source_name: self.file.clone(),
            field,
            detail: detail.into(),
        }
    }

    fn at(&self, path: String, v: &'a Value) -> Field<'a> {
        Field {
            file: self.file.clone(),
            path,
            v,
        }
    }

    fn get(&self, key: &str) -> Result<Field<'a>> {
        let path = if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        };
        match self.v.get(key) {
            Some(v) => Ok(self.at(path, v)),
            None => Err(self.err(key, "missing")),
        }
    }

    fn opt(&self) -> Option<&Field<'a>> {
        (!self.v.is_null()).then_some(self)
    }

    fn list(&self) -> Result<Vec<Field<'a>>> {
        let items = self
            .v
            .as_array()
            .ok_or_else(|| self.err("", "is not a list"))?;
        Ok(items
            .iter()
            .enumerate()
            .map(|(i, v)| self.at(format!("{}[{i}]", self.path), v))
            .collect())
    }

    fn u64(&self) -> Result<u64> {
        self.v
            .as_u64()
            .ok_or_else(|| self.err("", "is not a whole number ≥ 0"))
    }

    fn usize(&self) -> Result<usize> {
        usize::try_from(self.u64()?).map_err(|_| self.err("", "is too large"))
    }

    fn f64(&self) -> Result<f64> {
        Ok(f64::from_bits(self.u64()?))
    }

    fn f32(&self) -> Result<f32> {
        u32::try_from(self.u64()?)
            .map(f32::from_bits)
            .map_err(|_| self.err("", "is not a 32-bit pattern"))
    }

    fn bool(&self) -> Result<bool> {
        self.v
            .as_bool()
            .ok_or_else(|| self.err("", "is not true or false"))
    }

    fn str(&self) -> Result<&'a str> {
        self.v.as_str().ok_or_else(|| self.err("", "is not a text"))
    }

    fn strings(&self) -> Result<Vec<String>> {
        self.list()?
            .iter()
            .map(|f| f.str().map(str::to_string))
            .collect()
    }

    fn f64s(&self) -> Result<Vec<f64>> {
        self.list()?.iter().map(Field::f64).collect()
    }

    /// The array entry `name` (taken out of `arrays`).
    fn array(&self, arrays: &mut HashMap<String, ArrayD<f32>>, name: &str) -> Result<ArrayD<f32>> {
        arrays
            .remove(name)
            .ok_or_else(|| self.err("", format!("entry '{name}.npy' is missing")))
    }
}

/// The state from `state.json` (`f`) and the archive's arrays.
fn parse(f: &Field, arrays: &mut HashMap<String, ArrayD<f32>>) -> Result<ResumeState> {
    let format = f.get("format")?;
    if format.str()? != FORMAT {
        return Err(format.err("", format!("'{}', not '{FORMAT}'", format.str()?)));
    }
    let version = f.get("version")?;
    if version.u64()? != VERSION {
        let v = version.u64()?;
        return Err(version.err("", format!("{v}; this lcjit reads version {VERSION}")));
    }
    let mut fingerprint = Vec::new();
    for pair in f.get("fingerprint")?.list()? {
        let kv = pair.list()?;
        let [k, v] = kv.as_slice() else {
            return Err(pair.err("", "is not a [field, value] pair"));
        };
        fingerprint.push((k.str()?.to_string(), v.str()?.to_string()));
    }
    let shuffle_state = match f.get("shuffle_state")?.opt() {
        Some(s) => Some(s.u64()?),
        None => None,
    };
    let randomness = match f.get("randomness")?.opt() {
        Some(r) => {
            let words: Vec<u64> = r.list()?.iter().map(Field::u64).collect::<Result<_>>()?;
            match <[u64; 4]>::try_from(words) {
                Ok(w) if w != [0; 4] => Some(w),
                _ => return Err(r.err("", "is not four words of a generator state")),
            }
        }
        None => None,
    };
    let params_field = f.get("params")?;
    let params = (0..params_field.usize()?)
        .map(|i| params_field.array(arrays, &format!("params/{i}")))
        .collect::<Result<Vec<_>>>()?;
    Ok(ResumeState {
        source_name: String::new(),
        fingerprint: Fingerprint(fingerprint),
        epoch: f.get("epoch")?.usize()?,
        shuffle_state,
        randomness,
        params,
        optimizer: optimizer(&f.get("optimizer")?, arrays)?,
        accumulators: accumulators(&f.get("accumulators")?)?,
        history: history(&f.get("history")?)?,
        warnings: f.get("warnings")?.strings()?,
        callbacks: f
            .get("callbacks")?
            .list()?
            .iter()
            .enumerate()
            .map(|(i, c)| callback(c, i, arrays))
            .collect::<Result<_>>()?,
    })
}

fn optimizer(f: &Field, arrays: &mut HashMap<String, ArrayD<f32>>) -> Result<OptimizerState> {
    let mut slots = Vec::new();
    for (i, s) in f.get("slots")?.list()?.iter().enumerate() {
        let flags = s.list()?;
        if flags.len() != 3 {
            return Err(s.err("", "is not three flags (slots a, b, c)"));
        }
        let mut three: [Option<ArrayD<f32>>; 3] = [None, None, None];
        for (j, flag) in flags.iter().enumerate() {
            if flag.bool()? {
                three[j] = Some(flag.array(arrays, &format!("slots/{i}/{j}"))?);
            }
        }
        slots.push(three);
    }
    let lr = f.get("constant_learning_rate")?;
    Ok(OptimizerState {
        iterations: f.get("iterations")?.u64()?,
        slots,
        u_product: f.get("u_product")?.f32()?,
        keras_trace: f.get("keras_trace")?.u64()?,
        constant_learning_rate: match lr.opt() {
            Some(v) => Some(v.f32()?),
            None => None,
        },
    })
}

fn accumulators(f: &Field) -> Result<EpochAccumulators> {
    let mut metrics = Vec::new();
    for m in f.get("metrics")?.list()? {
        let resolution = m.get("resolution")?;
        let confusion = m.get("confusion")?;
        let confusion = match confusion.opt() {
            Some(c) => {
                let lists = c
                    .list()?
                    .iter()
                    .map(Field::f64s)
                    .collect::<Result<Vec<_>>>()?;
                let four = <[Vec<f64>; 4]>::try_from(lists)
                    .map_err(|_| c.err("", "is not four lists (tp, fp, tn, fn)"))?;
                Some(four)
            }
            None => None,
        };
        metrics.push(MetricSnapshot {
            name: m.get("name")?.str()?.to_string(),
            resolution: match resolution.opt() {
                Some(r) => Some(r.str()?.to_string()),
                None => None,
            },
            sum: m.get("sum")?.f64()?,
            count: m.get("count")?.f64()?,
            confusion,
        });
    }
    Ok(EpochAccumulators {
        steps_done: f.get("steps_done")?.usize()?,
        loss_sum: f.get("loss_sum")?.f64()?,
        loss_count: f.get("loss_count")?.f64()?,
        metrics,
    })
}

fn history(f: &Field) -> Result<History> {
    let epochs = f
        .get("epochs")?
        .list()?
        .iter()
        .map(Field::usize)
        .collect::<Result<Vec<_>>>()?;
    let mut entries = Vec::new();
    for e in f.get("entries")?.list()? {
        let kv = e.list()?;
        let [k, v] = kv.as_slice() else {
            return Err(e.err("", "is not a [key, values] pair"));
        };
        let values = v.f64s()?;
        if values.len() > epochs.len() {
            return Err(e.err("", "has more values than epochs"));
        }
        entries.push((k.str()?.to_string(), values));
    }
    Ok(History::from_parts(entries, epochs))
}

fn callback(
    f: &Field,
    i: usize,
    arrays: &mut HashMap<String, ArrayD<f32>>,
) -> Result<Option<CallbackState>> {
    let Some(f) = f.opt() else {
        return Ok(None);
    };
    let mut state = CallbackState::new(f.get("kind")?.str()?);
    for pair in f.get("fields")?.list()? {
        let kv = pair.list()?;
        let [k, v] = kv.as_slice() else {
            return Err(pair.err("", "is not a [name, value] pair"));
        };
        let value = if let Ok(n) = v.get("count") {
            StateValue::Count(n.u64()?)
        } else if let Ok(x) = v.get("float") {
            StateValue::Float(x.f64()?)
        } else if let Ok(b) = v.get("flag") {
            StateValue::Flag(b.bool()?)
        } else if let Ok(t) = v.get("text") {
            StateValue::Text(t.str()?.to_string())
        } else if let Ok(t) = v.get("texts") {
            StateValue::Texts(t.strings()?)
        } else if v.get("absent").is_ok() {
            StateValue::Absent
        } else {
            return Err(v.err("", "is not a count, float, flag, text, texts or absent"));
        };
        state.set(k.str()?, value);
    }
    let n = f.get("arrays")?;
    for k in 0..n.usize()? {
        state
            .arrays
            .push(n.array(arrays, &format!("callbacks/{i}/{k}"))?);
    }
    Ok(Some(state))
}
