//! SIGINT/SIGTERM handling for the command-line tool, and the registry of temporary files
//! that must not outlive the process.
//!
//! [`install`] (called by `lcjit` first thing, never by the library or the Python module)
//! blocks SIGINT and SIGTERM in the calling thread — every thread started later inherits
//! the mask (child processes do not: `std::process::Command` resets it) — and starts one
//! watcher thread that receives them with `sigwait`, in ordinary thread context, so it may
//! take locks and remove files. What a signal does:
//!
//! - while a [`Cooperative`] guard is alive (held by `fit`), the first signal only raises
//!   [`interrupted`]: training stops after the running step, keeps the weights of the last
//!   finished step and writes its checkpoint; the tool then exits with 128 + signal;
//! - otherwise, or at the next signal, the watcher removes every registered temporary file
//!   and exits at once with 128 + signal, *holding the registry lock*, so a write in flight
//!   can no longer rename its temporary over the destination.
//!
//! Invariant: a temporary file is registered under the lock before it is created and
//! unregistered under the lock when it is renamed or removed ([`create_temp`],
//! [`finish_temp`]); so whenever the lock is free the registry lists exactly the
//! temporaries that may exist, and the watcher's cleanup leaves none behind.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

static TEMPS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static SIGNAL: AtomicI32 = AtomicI32::new(0);
static COOPERATIVE: AtomicUsize = AtomicUsize::new(0);

fn temps() -> MutexGuard<'static, Vec<PathBuf>> {
    // A panic while holding the lock leaves the list itself intact.
    TEMPS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Creates the temporary file `tmp` (which must not exist) with `create`, registered so
/// that an interruption removes it.
pub fn create_temp(tmp: &Path, create: impl FnOnce(&Path) -> io::Result<File>) -> io::Result<File> {
    let mut list = temps();
    let file = create(tmp)?;
    list.push(tmp.to_path_buf());
    Ok(file)
}

/// Ends the life of temporary `tmp`: runs `commit` (a rename over the destination, or a
/// removal) and unregisters it, atomically with respect to an interruption.
pub fn finish_temp<T>(tmp: &Path, commit: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    let mut list = temps();
    let r = commit();
    if let Some(i) = list.iter().position(|p| p == tmp) {
        list.swap_remove(i);
    }
    r
}

/// Whether SIGINT or SIGTERM arrived while a [`Cooperative`] guard was alive.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Raises [`interrupted`] as a signal under a [`Cooperative`] guard would, without a
/// signal: for embedders that learn of an interruption another way (a Python
/// `KeyboardInterrupt`) and for tests that must interrupt `fit` at an exact step. The
/// flag is process-wide: every `fit` running in the process stops after its step.
pub fn raise() {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Lowers [`interrupted`] (and forgets the signal), so that a later `fit` in the same
/// process (a resumed one) runs to its end.
pub fn reset() {
    INTERRUPTED.store(false, Ordering::SeqCst);
    SIGNAL.store(0, Ordering::SeqCst);
}

/// The signal that set [`interrupted`] (0 if none).
pub fn signal() -> i32 {
    SIGNAL.load(Ordering::SeqCst)
}

/// While alive, the first SIGINT/SIGTERM sets [`interrupted`] instead of ending the
/// process: the holder polls it at safe points.
#[derive(Debug)]
pub struct Cooperative(());

/// Starts a cooperative section (see [`Cooperative`]).
pub fn cooperative() -> Cooperative {
    COOPERATIVE.fetch_add(1, Ordering::SeqCst);
    Cooperative(())
}

impl Drop for Cooperative {
    fn drop(&mut self) {
        COOPERATIVE.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Blocks SIGINT and SIGTERM in this thread (and so in every thread it starts) and
/// starts the watcher thread. Call before any other thread exists.
pub fn install() -> io::Result<()> {
    // SAFETY: `set` is a plain C struct initialized by `sigemptyset` before any other
    // use; `pthread_sigmask` only reads it and writes no old mask (null pointer).
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        set
    };
    std::thread::Builder::new()
        .name("lcjit-signals".into())
        .spawn(move || watch(set))?;
    Ok(())
}

fn watch(set: libc::sigset_t) {
    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` is an initialized signal set and `sig` a valid out-pointer; the
        // signals in `set` are blocked in this thread (inherited mask), as sigwait needs.
        if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
            continue;
        }
        if COOPERATIVE.load(Ordering::SeqCst) > 0 && !INTERRUPTED.swap(true, Ordering::SeqCst) {
            SIGNAL.store(sig, Ordering::SeqCst);
            eprintln!("lcjit: interrupted, stopping after the running step (again to abort)");
            continue;
        }
        let list = temps();
        for p in list.iter() {
            let _ = std::fs::remove_file(p);
        }
        eprintln!("error: interrupted by signal {sig}");
        // Exits with the lock held (see the module docs).
        std::process::exit(128 + sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporaries_are_registered_until_finished() {
        let dir = std::env::temp_dir().join(format!("lcjit-interrupt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let tmp = dir.join(".x.tmp");
        let f = create_temp(&tmp, |p| File::create_new(p)).expect("create");
        drop(f);
        assert!(temps().contains(&tmp));
        finish_temp(&tmp, || std::fs::remove_file(&tmp)).expect("remove");
        assert!(!temps().contains(&tmp));
        // A failed creation registers nothing.
        assert!(create_temp(&dir, |p| File::create_new(p)).is_err());
        assert!(!temps().contains(&dir));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
