//! [`CSVLogger`] and [`TerminateOnNaN`] (tf-keras 2.21).
//!
//! CSVLogger writes what Keras's writes — a header `epoch` then the first epoch's keys
//! sorted (plus a `val_` twin of each when no key starts with `val_`, Keras's provision
//! for `validation_freq`), one row per epoch, `NA` for a missing value, Python's `csv`
//! excel dialect (`\r\n` line ends, minimal quoting) — but as a whole file rewritten
//! atomically after every epoch instead of a stream, so the file on disk is always
//! complete. Floats print as Python prints them; a value that is exactly a float32 (the
//! learning rate, Keras's float32 variable) prints as NumPy prints a float32 (`0.03`).

use super::format::{python_f32, python_float};
use super::{required, Callback, CallbackState, Control, Logs, StateValue};
use crate::error::{Error, Result};
use std::io::Write;
use std::path::PathBuf;

/// Keras's `CSVLogger`: one row per epoch in a CSV file.
#[derive(Clone, Debug)]
pub struct CSVLogger {
    /// The file.
    pub filename: PathBuf,
    /// Field separator (one character).
    pub separator: char,
    /// Keep the rows an existing file has and add to them.
    pub append: bool,
    keys: Option<Vec<String>>,
    text: String,
    header: bool,
}

impl CSVLogger {
    /// A logger writing `filename` with `,` between fields, replacing any old file.
    pub fn new(filename: impl Into<PathBuf>) -> Self {
        CSVLogger {
            filename: filename.into(),
            separator: ',',
            append: false,
            keys: None,
            text: String::new(),
            header: true,
        }
    }

    fn field(&self, s: &str) -> String {
        let special = |c: char| c == self.separator || c == '"' || c == '\r' || c == '\n';
        if s.contains(special) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    }

    fn line(&mut self, fields: &[String]) {
        let row: Vec<String> = fields.iter().map(|f| self.field(f)).collect();
        self.text.push_str(&row.join(&self.separator.to_string()));
        self.text.push_str("\r\n");
    }

    /// The arguments, as a resume state compares them.
    fn config_text(&self) -> String {
        format!(
            "CSVLogger {{ filename: {:?}, separator: {:?}, append: {} }}",
            self.filename, self.separator, self.append
        )
    }

    fn flush(&self) -> Result<()> {
        let text = &self.text;
        crate::io::write_atomic(&self.filename, |w| w.write_all(text.as_bytes()))
    }
}

/// A log value as Keras's CSVLogger prints it.
fn value_text(v: f64) -> String {
    let single = v as f32;
    if v.is_finite() && single as f64 == v {
        python_f32(single)
    } else {
        python_float(v)
    }
}

impl Callback for CSVLogger {
    fn on_train_begin(&mut self, _ctl: &mut Control<'_>) -> Result<()> {
        self.keys = None;
        self.text.clear();
        self.header = true;
        if self.append && self.filename.exists() {
            self.text = std::fs::read_to_string(&self.filename)
                .map_err(|e| Error::io(&self.filename, e))?;
            self.header = self.text.lines().next().is_none_or(str::is_empty);
        }
        // Keras opens the file here ("w" or "a"), so it exists from the start.
        self.flush()
    }

    // The rows written so far are kept whole: the resumed run rewrites the file as the
    // uninterrupted run had it at the interruption and appends to that.
    fn export_state(&self) -> Option<CallbackState> {
        let mut s = CallbackState::new("CSVLogger");
        s.set("config", StateValue::Text(self.config_text()))
            .set(
                "keys",
                self.keys
                    .clone()
                    .map_or(StateValue::Absent, StateValue::Texts),
            )
            .set("text", StateValue::Text(self.text.clone()))
            .set("header", StateValue::Flag(self.header));
        Some(s)
    }

    fn on_train_resume(
        &mut self,
        state: Option<&CallbackState>,
        _ctl: &mut Control<'_>,
    ) -> Result<()> {
        let s = required(state, "CSVLogger")?;
        s.expect_config(&self.config_text())?;
        let keys = s.opt_texts("keys")?.map(<[String]>::to_vec);
        let text = s.text("text")?.to_string();
        let header = s.flag("header")?;
        self.keys = keys;
        self.text = text;
        self.header = header;
        self.flush()
    }

    fn on_epoch_end(
        &mut self,
        epoch: usize,
        logs: &mut Logs,
        _ctl: &mut Control<'_>,
    ) -> Result<()> {
        let keys = match &self.keys {
            Some(k) => k.clone(),
            None => {
                let mut k: Vec<String> = logs.keys().map(str::to_string).collect();
                k.sort();
                if !k.iter().any(|k| k.starts_with("val_")) {
                    let twins: Vec<String> = k.iter().map(|k| format!("val_{k}")).collect();
                    k.extend(twins);
                }
                self.keys = Some(k.clone());
                k
            }
        };
        if self.header {
            let mut head = vec!["epoch".to_string()];
            head.extend(keys.iter().cloned());
            self.line(&head);
            self.header = false;
        }
        let mut row = vec![epoch.to_string()];
        row.extend(
            keys.iter()
                .map(|k| logs.get(k).map_or("NA".to_string(), value_text)),
        );
        self.line(&row);
        self.flush()
    }
}

/// Keras's `TerminateOnNaN`: stops training after a batch whose logged loss (the epoch's
/// running mean, which a non-finite batch makes non-finite) is NaN or infinite. Like
/// Keras it looks at the loss only, and the batch's update has been applied when it does.
#[derive(Clone, Debug, Default)]
pub struct TerminateOnNaN {
    epoch: usize,
}

impl TerminateOnNaN {
    /// The callback.
    pub fn new() -> Self {
        TerminateOnNaN::default()
    }
}

impl Callback for TerminateOnNaN {
    fn on_epoch_begin(&mut self, epoch: usize, _ctl: &mut Control<'_>) -> Result<()> {
        self.epoch = epoch;
        Ok(())
    }

    fn export_state(&self) -> Option<CallbackState> {
        let mut s = CallbackState::new("TerminateOnNaN");
        s.set("epoch", StateValue::Count(self.epoch as u64));
        Some(s)
    }

    fn on_train_resume(
        &mut self,
        state: Option<&CallbackState>,
        _ctl: &mut Control<'_>,
    ) -> Result<()> {
        self.epoch = required(state, "TerminateOnNaN")?.count("epoch")?;
        Ok(())
    }

    fn on_train_batch_end(
        &mut self,
        batch: usize,
        logs: &Logs,
        ctl: &mut Control<'_>,
    ) -> Result<()> {
        if let Some(loss) = logs.get("loss") {
            if !loss.is_finite() {
                eprintln!("Batch {batch}: Invalid loss, terminating training");
                ctl.stop_training(format!(
                    "TerminateOnNaN: invalid loss {} at batch {} of epoch {}",
                    python_float(loss),
                    batch,
                    self.epoch + 1
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::drive;
    use super::*;

    #[test]
    fn csv_as_keras_writes_it() {
        let dir = crate::io::test_dir("csv_logger");
        let path = dir.join("log.csv");
        let mut cb = CSVLogger::new(&path);
        drive(&mut cb, "loss", &[0.5, 0.25]);
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text, "epoch,loss,val_loss\r\n0,0.5,NA\r\n1,0.25,NA\r\n");
        // Appending keeps the rows and writes no second header.
        cb.append = true;
        drive(&mut cb, "loss", &[0.125]);
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(
            text,
            "epoch,loss,val_loss\r\n0,0.5,NA\r\n1,0.25,NA\r\n0,0.125,NA\r\n"
        );
        assert_eq!(value_text(0.03f32 as f64), "0.03");
        assert_eq!(value_text(0.1), "0.1");
        assert_eq!(value_text(1.0 / 3.0), "0.3333333333333333");
    }

    #[test]
    fn terminate_on_nan_looks_at_the_loss() {
        let stop = super::super::test_util::with_control(3, |ctl| {
            let mut cb = TerminateOnNaN::new();
            let mut logs = Logs::new();
            logs.set("loss", 1.0);
            logs.set("mae", f64::NAN);
            cb.on_train_batch_end(0, &logs, ctl).expect("batch");
            assert!(!ctl.stop_requested(), "a NaN metric is not looked at");
            logs.set("loss", f64::INFINITY);
            cb.on_train_batch_end(1, &logs, ctl).expect("batch");
            assert!(ctl.stop_requested());
        });
        assert!(stop.is_some_and(|s| s.contains("inf") && s.contains("batch 1")));
    }
}
