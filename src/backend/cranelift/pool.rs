//! The persistent worker threads behind [`super::CompiledModule::run_args`]: no thread is
//! created per call once the process has warmed up.
//!
//! # Where the threads live
//!
//! One process-wide cache of *teams*. A team is a set of parked worker threads that serves
//! one `run_args` call at a time: the call checks a team out when its first parallel
//! kernel needs more than one thread, dispatches every parallel kernel of the call to it,
//! and puts it back when the call returns. A call that finds no idle team large enough
//! starts a new one (the only time threads are created), so
//!
//! - several models in one process share the same threads (a per-`CompiledModule` pool
//!   would keep `threads − 1` idle threads per loaded model, and a forward and a backward
//!   module of one model would each hold their own);
//! - concurrent calls (Python threads predicting on two models, or on one) never wait for
//!   each other: each holds its own team for the duration of its call, the cache lock is
//!   held only to pop or push a team, never while a kernel runs, so two concurrent
//!   `run_args` calls cannot deadlock or serialize; the number of teams follows the
//!   largest number of concurrent calls seen (idle teams beyond [`MAX_IDLE_TEAMS`] are
//!   shut down when returned);
//! - a child process made by `fork` (Python's multiprocessing) inherits the cache but not
//!   the threads; teams started by another process are forgotten, not used or joined;
//! - one global pool with one job queue (rayon's shape) would instead make concurrent
//!   calls share `threads` workers, and a chunk of one call could wait behind chunks of
//!   another.
//!
//! # Partition and determinism
//!
//! A dispatch splits `0..extent` into `n` contiguous chunks `[t·E/n, (t+1)·E/n)`, exactly
//! as the scoped threads did: the caller runs chunk 0, worker `w` runs chunk `w + 1`.
//! Which thread runs a chunk never changes what it computes, so results stay bitwise
//! identical for any thread count. A team whose workers could not all be started (the OS
//! refused a thread) runs the chunks of the missing workers on the calling thread, after
//! its own chunk: same results, only slower.
//!
//! # Hand-off
//!
//! A dispatch publishes the job under a mutex, bumps an atomic epoch and wakes parked
//! workers; workers spin for up to [`SPIN_WINDOW`] after each job (consecutive parallel
//! kernels of one call, and the calls of a serving or training loop, follow each other
//! within microseconds) and then park on a condition variable, so an idle process uses no
//! CPU. The caller, after its own chunk, waits for a
//! counter of unfinished chunks the same way (spin, then park). Parking uses the classic
//! "announce, then re-check" order with sequentially consistent atomics on both sides, so
//! no wake-up is lost.

//!
//! # Why not rayon
//!
//! The issue asked for rayon's `ThreadPool` with a fixed partition and this pool to be
//! measured against each other. `pool_rayon.rs` (feature `rayon-pool`) is that
//! alternative, same partition. One run on the 2-core test machine (2026-12-06; other
//! work frozen; `lcjit bench --engines jit --train`, 4 alternating repetitions of each
//! binary; medians in ms, forward / training step), against the scoped threads the pool
//! replaced (commit 20f0aad, which also predates the seam and Dense's blocked sums):
//!
//! | workload, batch | scoped threads | this pool | rayon |
//! | --- | --- | --- | --- |
//! | snp_lc1d, 1 | 0.181 / 1.378 | 0.115 / 1.165 | 0.111 / 1.199 |
//! | snp_lc1d, 32 | 1.86 / 6.19 | 1.48 / 5.13 | 1.36 / 6.13 |
//! | mortality_smoother, 1 | 0.0377 / 0.250 | 0.0371 / 0.217 | 0.0295 / 0.208 |
//! | mortality_smoother, 32 | 0.410 / 1.46 | 0.369 / 1.38 | 0.362 / 1.46 |
//! | genomics_lc1d, 1 | 0.218 / 2.20 | 0.145 / 1.72 | 0.154 / 1.87 |
//! | deepface_l4_l6, 32 | 106.1 / 297.1 | 98.7 / 265.2 | 100.8 / 278.3 |
//!
//! Neither is faster across the board (the spread of one binary over the repetitions is
//! ±10–30 % on this machine); the pool stays because rayon's one job queue makes
//! concurrent calls (two Python threads predicting) share `threads` workers, where a
//! team per call keeps them independent, and because the teams survive `fork` (see
//! above) while a rayon pool inherited by a child process hangs its first call
//! (rayon-rs/rayon#708, closed as unsupportable).

// With the feature `rayon-pool` the teams below are compiled but unused (pool_rayon.rs).
#![cfg_attr(feature = "rayon-pool", allow(dead_code))]

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

/// The kernel ABI (see the module docs of [`super`]).
pub(super) type KernelFn = unsafe extern "C" fn(*const *mut f32, i64, i64);

/// Idle teams kept for later calls; more are shut down when returned.
const MAX_IDLE_TEAMS: usize = 8;

/// Spin iterations (each one `spin_loop` hint) a worker waits for the next job, and the
/// caller for the workers, before it looks at the clock (see [`SPIN_WINDOW`]).
const SPIN: u32 = 256;

/// How long a worker waits for the next job, and the caller for the workers, spinning
/// (`spin_loop` hints, never `sched_yield`) before parking on a condition variable.
///
/// Waking a parked thread costs far more than its kernel on small models: on a 2-vCPU KVM
/// guest the futex wake-up of a halted vCPU took tens of µs, paid by every kernel of a
/// batch-1 call whose worker had parked between calls or while the caller finished its
/// chunk. Measured (2026-12-07, Xeon guest, 2 threads, medians of 9 alternating runs of
/// `lcjit bench --batch 1`, ms, 256 spins only → this window): genomics_lc1d 0.253 →
/// 0.123, snp_lc1d 0.257 → 0.105, lc1d_f2 0.58 → 0.48, genomic_residual_lc1d 0.48 →
/// 0.25; with two CPU hogs on both cores 0.235 → 0.114 and 0.241 → 0.132 (the spinner
/// holds a core for at most this long per call). Spinning with `sched_yield` instead
/// measured the same on an idle machine and 30× slower under the hogs (each yield handed
/// a full time slice to the hog). Batch-32 and larger models do not change. An earlier
/// 4096-spin count hurt a 25 µs forward pass on a loaded machine (0.03 → 0.17 ms);
/// mortality_smoother's 11–13 µs forward pass measured the same with this window, idle
/// and under the hogs. OpenMP runtimes spin far longer (libgomp's default spin count is
/// about 0.3 ms; Intel's `KMP_BLOCKTIME` 200 ms).
const SPIN_WINDOW: std::time::Duration = std::time::Duration::from_micros(100);

/// Spins while `busy()` holds, for [`SPIN`] iterations and then until [`SPIN_WINDOW`] has
/// passed; whether it still holds (the caller then parks).
fn spin_while(busy: impl Fn() -> bool) -> bool {
    for _ in 0..SPIN {
        if !busy() {
            return false;
        }
        std::hint::spin_loop();
    }
    let start = std::time::Instant::now();
    while busy() {
        if start.elapsed() >= SPIN_WINDOW {
            return true;
        }
        std::hint::spin_loop();
    }
    false
}

/// The buffer base-pointer array handed to kernels on every thread.
#[derive(Clone, Copy)]
pub(super) struct BufPtrs(pub(super) *const *mut f32);

// SAFETY: the pointer array is owned by the `run_args` frame that dispatches, which waits
// until every chunk of a dispatch has finished before it returns or dispatches again
// (`Team::run`), so no thread dereferences it after it is freed. Kernels called on
// different threads write disjoint elements (a parallel loop's iterations write disjoint
// elements: the loop-IR contract) and only read elements no concurrent iteration writes.
unsafe impl Send for BufPtrs {}
// SAFETY: as for `Send`: the array itself is only read.
unsafe impl Sync for BufPtrs {}

impl BufPtrs {
    /// Calls `f` on iterations `start..end`.
    ///
    /// The caller (`CompiledModule::run_args`) guarantees what the `unsafe` call needs:
    /// see the `# Safety` note inside.
    pub(super) fn call(&self, f: KernelFn, start: i64, end: i64) {
        // # Safety
        // `run_args` checked that buffer `i` has exactly `module.buffers[i].len` elements,
        // and the loop-IR verifier (run by `compile`) proved every load and store of every
        // kernel in bounds for those lengths, for every iteration of every loop, including
        // `start..end ⊆ 0..extent` of the parallel loop (serial kernels ignore the
        // bounds). The `&mut` slices are exclusive and the shared slices are never written
        // (no store to a read-only buffer passes the verifier), so no Rust code observes a
        // write during the call; `f` is a finalized function of a JIT module kept alive by
        // the `&CompiledModule` borrowed for the whole `run_args`, which does not return
        // before every chunk of its dispatches has finished (`Team::run`).
        unsafe { f(self.0, start, end) }
    }
}

/// Start of chunk `t` of `n` over `0..extent`.
pub(super) fn chunk(t: u64, extent: u64, n: u64) -> i64 {
    // ≤ extent ≤ i64::MAX (checked by `classify`).
    (u128::from(t) * u128::from(extent) / u128::from(n)) as i64
}

/// One parallel kernel call split into `n` chunks.
#[derive(Clone, Copy)]
struct Job {
    epoch: u64,
    func: KernelFn,
    ptrs: BufPtrs,
    extent: u64,
    n: u64,
}

/// State shared by a team's caller side and its workers.
struct Shared {
    /// The current job (its `epoch` equals `epoch` once published).
    job: Mutex<Option<Job>>,
    /// Bumped once per dispatch; workers poll it.
    epoch: AtomicU64,
    /// Chunks of the current dispatch not yet finished by workers.
    remaining: AtomicUsize,
    /// Workers parked (or about to park) on `work`.
    sleepers: AtomicUsize,
    /// The caller parked (or about to park) on `done`.
    caller_waiting: AtomicBool,
    shutdown: AtomicBool,
    /// Guards the two condition variables (parking only).
    park: Mutex<()>,
    work: Condvar,
    done: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; recover anyway rather than propagate.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn worker_loop(&self, index: u64) {
        let mut seen = 0u64;
        loop {
            // Wait for a new epoch: spin, then park.
            let idle = || self.epoch.load(SeqCst) == seen && !self.shutdown.load(SeqCst);
            if spin_while(idle) {
                let mut g = lock(&self.park);
                self.sleepers.fetch_add(1, SeqCst);
                while idle() {
                    g = self.work.wait(g).unwrap_or_else(PoisonError::into_inner);
                }
                self.sleepers.fetch_sub(1, SeqCst);
            }
            if self.shutdown.load(SeqCst) {
                return;
            }
            let Some(job) = *lock(&self.job) else {
                continue;
            };
            if job.epoch == seen {
                continue;
            }
            seen = job.epoch;
            let t = index + 1;
            if t >= job.n {
                continue; // not part of this dispatch
            }
            job.ptrs.call(
                job.func,
                chunk(t, job.extent, job.n),
                chunk(t + 1, job.extent, job.n),
            );
            if self.remaining.fetch_sub(1, SeqCst) == 1 && self.caller_waiting.load(SeqCst) {
                let _g = lock(&self.park);
                self.done.notify_one();
            }
        }
    }
}

/// Parked workers serving one `run_args` call at a time.
pub(super) struct Team {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
    /// Workers asked for when the team was made (some may have failed to start).
    wanted: usize,
    /// The process that started the workers: a child made by `fork` (Python's
    /// multiprocessing) inherits the cache but not the threads.
    pid: u32,
}

/// Worker threads started so far by the process (tests check that calls reuse them).
static STARTED: AtomicUsize = AtomicUsize::new(0);

/// Worker threads the process has started so far.
#[cfg(test)]
pub(super) fn workers_started() -> usize {
    STARTED.load(SeqCst)
}

impl Team {
    fn new(wanted: usize) -> Team {
        Team::start(wanted, wanted)
    }

    /// A team of `wanted` workers of which only the first `limit` are started, as if the
    /// OS had refused the others (tests of the fallback).
    pub(super) fn start(wanted: usize, limit: usize) -> Team {
        let shared = Arc::new(Shared {
            job: Mutex::new(None),
            epoch: AtomicU64::new(0),
            remaining: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            caller_waiting: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            park: Mutex::new(()),
            work: Condvar::new(),
            done: Condvar::new(),
        });
        let mut handles = Vec::with_capacity(wanted);
        for w in 0..wanted.min(limit) {
            let s = Arc::clone(&shared);
            let spawned = std::thread::Builder::new()
                .name(format!("lcjit-worker-{w}"))
                .spawn(move || s.worker_loop(w as u64));
            match spawned {
                Ok(h) => {
                    STARTED.fetch_add(1, SeqCst);
                    handles.push(h);
                }
                // Workers are indexed densely: stop at the first failure; the caller runs
                // the chunks of the missing ones.
                Err(_) => break,
            }
        }
        Team {
            shared,
            handles,
            wanted,
            pid: std::process::id(),
        }
    }

    /// Runs `func` over `0..extent` in `n ≥ 1` contiguous chunks, the caller taking chunk 0
    /// (and the chunks of workers that could not be started); returns when all are done.
    pub(super) fn run(&self, func: KernelFn, ptrs: BufPtrs, extent: u64, n: u64) {
        let s = &*self.shared;
        let helpers = (self.handles.len() as u64).min(n.saturating_sub(1));
        if helpers > 0 {
            let epoch = s.epoch.load(SeqCst) + 1;
            *lock(&s.job) = Some(Job {
                epoch,
                func,
                ptrs,
                extent,
                n,
            });
            s.remaining.store(helpers as usize, SeqCst);
            s.epoch.store(epoch, SeqCst);
            if s.sleepers.load(SeqCst) > 0 {
                let _g = lock(&s.park);
                s.work.notify_all();
            }
        }
        // Chunk 0, then the chunks no worker took (only when workers are missing).
        ptrs.call(func, chunk(0, extent, n), chunk(1, extent, n));
        for t in helpers + 1..n {
            ptrs.call(func, chunk(t, extent, n), chunk(t + 1, extent, n));
        }
        let unfinished = || s.remaining.load(SeqCst) != 0;
        if helpers > 0 && spin_while(unfinished) {
            let mut g = lock(&s.park);
            s.caller_waiting.store(true, SeqCst);
            while unfinished() {
                g = s.done.wait(g).unwrap_or_else(PoisonError::into_inner);
            }
            s.caller_waiting.store(false, SeqCst);
        }
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        {
            let _g = lock(&self.shared.park);
            self.shared.shutdown.store(true, SeqCst);
            self.shared.work.notify_all();
        }
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// Idle teams of the process.
static IDLE: Mutex<Vec<Team>> = Mutex::new(Vec::new());

/// A team checked out of the process-wide cache for one `run_args` call; put back when
/// dropped.
pub(super) struct Lease(Option<Team>);

impl Lease {
    /// A team with at least `workers` workers asked for: an idle one if there is one,
    /// else a new one (the only place threads are started).
    pub(super) fn get(workers: usize) -> Lease {
        let found = {
            let mut idle = lock(&IDLE);
            let pid = std::process::id();
            if idle.iter().any(|t| t.pid != pid) {
                // Inherited through `fork`: their threads do not exist here, so they can
                // neither run chunks nor be joined; forget them (a one-time leak).
                for t in std::mem::take(&mut *idle) {
                    if t.pid == pid {
                        idle.push(t);
                    } else {
                        std::mem::forget(t);
                    }
                }
            }
            // Smallest idle team that is large enough.
            let best = idle
                .iter()
                .enumerate()
                .filter(|(_, t)| t.wanted >= workers)
                .min_by_key(|(_, t)| t.wanted)
                .map(|(i, _)| i);
            best.map(|i| idle.swap_remove(i))
        };
        Lease(Some(found.unwrap_or_else(|| Team::new(workers))))
    }

    /// The leased team.
    pub(super) fn team(&self) -> Option<&Team> {
        self.0.as_ref()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(team) = self.0.take() {
            let surplus = {
                let mut idle = lock(&IDLE);
                idle.push(team);
                if idle.len() > MAX_IDLE_TEAMS {
                    // Shut down the smallest (joined outside the lock).
                    let i = idle
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, t)| t.wanted)
                        .map(|(i, _)| i);
                    i.map(|i| idle.swap_remove(i))
                } else {
                    None
                }
            };
            drop(surplus);
        }
    }
}
