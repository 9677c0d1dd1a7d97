//! The one program cache of a [`super::CompiledModel`]: forward programs (the whole model
//! or a graph cut at inner layers) and gradient programs (two phases), keyed by what they
//! compute and their batch size, plus one pool of the writable buffers of finished runs
//! under the same keys.
//!
//! Invariants: an entry is never evicted or replaced, so a key names one program for the
//! model's whole life and pooled buffers always fit the program of their key; the entry
//! map is locked while a missing program is lowered and compiled, so two threads asking
//! for the same program compile it once.

use super::grad::PreparedGrad;
use super::{Prepared, ProgramKey};
use crate::error::{Error, Result};
use crate::lower::grad::Mode;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// What a cached program computes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum CacheKey {
    /// The forward program of the model (or of a cut) for a batch size.
    Forward(ProgramKey, usize),
    /// The gradient program for a batch size, in inference or training mode, and the
    /// key of the optimizer rule it applies in place, if any
    /// ([`crate::lower::in_place::InPlaceRule::key`]).
    Gradient(usize, Mode, Option<String>),
}

/// A cached program.
#[derive(Clone)]
pub(crate) enum Cached {
    /// A forward program.
    Forward(Arc<Prepared>),
    /// A gradient program.
    Gradient(Arc<PreparedGrad>),
}

/// Writable buffers of finished runs, by the key of their program.
pub(crate) type Pool = Vec<(CacheKey, Vec<Vec<f32>>)>;

/// Programs and buffer pool (see the module docs).
#[derive(Default)]
pub(crate) struct Programs {
    entries: Mutex<HashMap<CacheKey, Cached>>,
    pool: Mutex<Pool>,
}

impl Programs {
    /// The program of `key`, made by `make` (under the lock) the first time.
    pub fn get_or_make(
        &self,
        key: CacheKey,
        make: impl FnOnce() -> Result<Cached>,
    ) -> Result<Cached> {
        let mut entries = self
            .entries
            .lock()
            .map_err(|_| Error::internal("program cache poisoned"))?;
        if let Some(c) = entries.get(&key) {
            return Ok(c.clone());
        }
        let c = make()?;
        entries.insert(key, c.clone());
        Ok(c)
    }

    /// Caches `c` as the program of `key` (replacing any).
    pub fn insert(&self, key: CacheKey, c: Cached) -> Result<()> {
        self.entries
            .lock()
            .map_err(|_| Error::internal("program cache poisoned"))?
            .insert(key, c);
        Ok(())
    }

    /// The forward program of `key`, made by `make` the first time.
    pub fn forward(
        &self,
        key: CacheKey,
        make: impl FnOnce() -> Result<Prepared>,
    ) -> Result<Arc<Prepared>> {
        match self.get_or_make(key, || Ok(Cached::Forward(Arc::new(make()?))))? {
            Cached::Forward(p) => Ok(p),
            Cached::Gradient(_) => Err(Error::internal("forward key holds a gradient program")),
        }
    }

    /// The gradient program of `key`, made by `make` the first time.
    pub fn gradient(
        &self,
        key: CacheKey,
        make: impl FnOnce() -> Result<PreparedGrad>,
    ) -> Result<Arc<PreparedGrad>> {
        match self.get_or_make(key, || Ok(Cached::Gradient(Arc::new(make()?))))? {
            Cached::Gradient(p) => Ok(p),
            Cached::Forward(_) => Err(Error::internal("gradient key holds a forward program")),
        }
    }

    /// The cached program of `key`, if any.
    pub fn get(&self, key: &CacheKey) -> Option<Cached> {
        self.entries.lock().ok().and_then(|e| e.get(key).cloned())
    }

    /// The buffer pool (`None` if poisoned: callers then allocate fresh buffers).
    pub fn pool(&self) -> Option<MutexGuard<'_, Pool>> {
        self.pool.lock().ok()
    }

    /// Hands a run's buffers back for the next run of the same program.
    pub fn give_back(&self, key: CacheKey, bufs: Vec<Vec<f32>>) {
        if let Some(mut pool) = self.pool() {
            pool.push((key, bufs));
        }
    }
}
