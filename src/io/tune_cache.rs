//! The autotuning cache ([`crate::runtime::tune`]): a JSON file of the schedule family
//! measured fastest for each layer key on each CPU and thread count, so that a model
//! compiled again (in this process or another) skips the timing.
//!
//! Format (`"format": "lcjit-tune", "version": 1`): `entries`, each with `cpu` (the
//! host's identity, [`crate::runtime::tune::cpu_identity`]), `threads`, `layer` (the
//! layer key, [`crate::lower::schedule::lc::layer_key`]), `plan` (the family's name)
//! and `ms` (the measured time of every family tried, for the record).
//!
//! Invariants: a missing file is an empty cache; a file that is not this format is
//! [`Error::Format`] naming it and the entry (never silently overwritten); writes go
//! through [`crate::write_file::write_atomic`] after re-reading the file, so entries
//! another process added meanwhile are kept; at most one entry per
//! `(cpu, threads, layer)`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Name of the format in the file's `format` field.
const FORMAT: &str = "lcjit-tune";
/// Version written and the only one read.
const VERSION: u32 = 1;
/// Kind named in [`Error::Format`].
const KIND: &str = "lcjit tuning cache";

/// One measured choice.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TuneEntry {
    /// The CPU it was measured on.
    pub cpu: String,
    /// Worker threads during the measurement.
    pub threads: usize,
    /// The layer key.
    pub layer: String,
    /// The family chosen.
    pub plan: String,
    /// Milliseconds per call of each family tried, by name.
    pub ms: BTreeMap<String, f64>,
}

#[derive(Serialize, Deserialize)]
struct TuneFile {
    format: String,
    version: u32,
    entries: Vec<TuneEntry>,
}

/// A tuning cache file and the entries added since it was read.
#[derive(Debug)]
pub struct TuneCache {
    path: PathBuf,
    entries: Vec<TuneEntry>,
    added: Vec<TuneEntry>,
}

impl TuneCache {
    /// Reads the cache at `path` (empty when the file does not exist), within `budget`
    /// bytes of memory.
    pub fn load(path: &Path, budget: u64) -> Result<TuneCache> {
        Ok(TuneCache {
            path: path.to_path_buf(),
            entries: read_entries(path, budget)?,
            added: Vec::new(),
        })
    }

    /// The entry of `layer` measured on `cpu` with `threads` threads.
    pub fn lookup(&self, cpu: &str, threads: usize, layer: &str) -> Option<&TuneEntry> {
        self.entries
            .iter()
            .find(|e| e.cpu == cpu && e.threads == threads && e.layer == layer)
    }

    /// Records an entry (replacing one of the same CPU, threads and layer).
    pub fn record(&mut self, entry: TuneEntry) {
        upsert(&mut self.entries, entry.clone());
        self.added.push(entry);
    }

    /// Writes the file, when entries were added: the file as it is now, plus them.
    pub fn save(&mut self, budget: u64) -> Result<()> {
        if self.added.is_empty() {
            return Ok(());
        }
        let mut entries = read_entries(&self.path, budget)?;
        for e in self.added.drain(..) {
            upsert(&mut entries, e);
        }
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let file = TuneFile {
            format: FORMAT.into(),
            version: VERSION,
            entries,
        };
        crate::write_file::write_atomic(&self.path, |w| {
            serde_json::to_writer_pretty(&mut *w, &file).map_err(std::io::Error::other)?;
            std::io::Write::write_all(w, b"\n")
        })?;
        self.entries = file.entries;
        Ok(())
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn upsert(entries: &mut Vec<TuneEntry>, e: TuneEntry) {
    match entries
        .iter_mut()
        .find(|o| o.cpu == e.cpu && o.threads == e.threads && o.layer == e.layer)
    {
        Some(o) => *o = e,
        None => entries.push(e),
    }
}

fn read_entries(path: &Path, budget: u64) -> Result<Vec<TuneEntry>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = super::read_text_within(path, budget)?;
    let file: TuneFile =
        serde_json::from_str(&text).map_err(|e| Error::format(path, KIND, e.to_string()))?;
    if file.format != FORMAT || file.version != VERSION {
        return Err(Error::format(
            path,
            KIND,
            format!(
                "format '{}' version {} (expected '{FORMAT}' version {VERSION})",
                file.format, file.version
            ),
        ));
    }
    if let Some((i, e)) = file
        .entries
        .iter()
        .enumerate()
        .find(|(_, e)| e.threads == 0 || e.ms.values().any(|v| !v.is_finite() || *v < 0.0))
    {
        return Err(Error::format(
            path,
            KIND,
            format!(
                "entry {i} (layer '{}'): threads must be at least 1 and times finite",
                e.layer
            ),
        ));
    }
    Ok(file.entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(layer: &str, plan: &str) -> TuneEntry {
        TuneEntry {
            cpu: "cpu".into(),
            threads: 2,
            layer: layer.into(),
            plan: plan.into(),
            ms: BTreeMap::from([(plan.to_string(), 1.5)]),
        }
    }

    #[test]
    fn round_trip_keeps_other_writers_entries() {
        let dir = std::env::temp_dir().join(format!("lcjit-tune-{}", std::process::id()));
        let path = dir.join("sub").join("tune.json");
        let budget = 1 << 30;
        let mut a = TuneCache::load(&path, budget).expect("missing file is empty");
        let mut b = TuneCache::load(&path, budget).expect("missing file is empty");
        a.record(entry("l1", "batch"));
        a.save(budget).expect("save a");
        b.record(entry("l2", "filters"));
        b.save(budget).expect("save b");
        let c = TuneCache::load(&path, budget).expect("load");
        assert_eq!(c.lookup("cpu", 2, "l1"), Some(&entry("l1", "batch")));
        assert_eq!(c.lookup("cpu", 2, "l2"), Some(&entry("l2", "filters")));
        assert_eq!(c.lookup("cpu", 1, "l2"), None);
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn malformed_files_name_the_file() {
        let dir = std::env::temp_dir().join(format!("lcjit-tune-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("tune.json");
        for text in [
            "not json",
            r#"{"format": "other", "version": 1, "entries": []}"#,
            r#"{"format": "lcjit-tune", "version": 1, "entries": [{"cpu": "c", "threads": 0, "layer": "l", "plan": "batch", "ms": {}}]}"#,
        ] {
            std::fs::write(&path, text).expect("write");
            let e = TuneCache::load(&path, 1 << 30).expect_err("refused");
            assert!(matches!(e, Error::Format { .. }), "{e}");
            assert!(e.to_string().contains("tune.json"), "{e}");
        }
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
