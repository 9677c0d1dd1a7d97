//! The measured alternative to [`super::pool`]: rayon's `ThreadPool` with the same fixed
//! partition, behind the non-default cargo feature `rayon-pool`
//! (`cargo build --release --features rayon-pool`), so the comparison the pool's choice
//! rests on can be re-run on any machine (figures in the module docs of [`super::pool`]).
//!
//! Same interface as the own pool ([`Lease`], [`Team::run`]) and the same partition:
//! chunk `t` of `n` is `[t·E/n, (t+1)·E/n)`; the caller runs chunk 0 inside
//! `in_place_scope` and the pool's workers the others, so results are bitwise those of
//! the own pool. One rayon pool per worker count is kept for the process; unlike the own
//! pool's teams, concurrent calls share its workers (rayon's one job queue).

use std::sync::{Arc, Mutex, PoisonError};

use super::pool::{chunk, BufPtrs, KernelFn};

/// Rayon pools of the process by worker count.
static POOLS: Mutex<Vec<(usize, Arc<rayon::ThreadPool>)>> = Mutex::new(Vec::new());

/// A rayon pool used for one `run_args` call.
pub(super) struct Team(Arc<rayon::ThreadPool>);

impl Team {
    /// Runs chunks `0..n` of `0..extent`: chunk 0 on the caller, the rest on the pool;
    /// returns when all have finished.
    pub(super) fn run(&self, func: KernelFn, ptrs: BufPtrs, extent: u64, n: u64) {
        self.0.in_place_scope(|s| {
            for t in 1..n {
                s.spawn(move |_| ptrs.call(func, chunk(t, extent, n), chunk(t + 1, extent, n)));
            }
            ptrs.call(func, chunk(0, extent, n), chunk(1, extent, n));
        });
    }
}

/// The pool for one call (none if rayon could not start its threads: the caller then runs
/// every chunk itself, as with the own pool).
pub(super) struct Lease(Option<Team>);

impl Lease {
    /// The process's rayon pool with `workers` threads, started on first use.
    pub(super) fn get(workers: usize) -> Lease {
        let mut pools = POOLS.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, p)) = pools.iter().find(|(w, _)| *w == workers) {
            return Lease(Some(Team(Arc::clone(p))));
        }
        match rayon::ThreadPoolBuilder::new().num_threads(workers).build() {
            Ok(p) => {
                let p = Arc::new(p);
                pools.push((workers, Arc::clone(&p)));
                Lease(Some(Team(p)))
            }
            Err(_) => Lease(None),
        }
    }

    /// The leased pool.
    pub(super) fn team(&self) -> Option<&Team> {
        self.0.as_ref()
    }
}
