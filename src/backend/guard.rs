//! Checked mode: native programs run over buffers placed between `PROT_NONE` guard
//! pages, so an out-of-bounds access that the loop-IR verifier failed to rule out faults
//! at once (SIGSEGV at the offending instruction) instead of silently reading or
//! corrupting a neighbour.
//!
//! How a checked run works ([`run_checked`]): every buffer of the table is copied into a
//! mapping of its own, `[guard page | data pages | guard page]`; read-only buffers
//! (inputs, parameters, constants) are then made read-only too, so a stray store faults
//! as well. A buffer can sit flush against only one of its guards (its byte length is
//! rarely a page multiple), so the program runs twice: once with every buffer ending
//! exactly at its trailing guard (catches overruns), once with every buffer starting
//! exactly at its leading guard (catches underruns). The two runs must write the same
//! bits; the first run's results are copied back into the caller's buffers. The caller's
//! own buffers are never handed to the kernels, so a checked run leaves them exactly as
//! an unchecked run would.
//!
//! Checked mode is a process-wide switch for testing and debugging (it costs two copies
//! of every buffer and two runs per call): the environment variable `LCJIT_CHECKED=1`
//! turns it on for every program prepared afterwards (the test suite is run once more
//! that way, see `.ci/run`), and so does `lcjit --checked` ([`enable_checked_mode`]).
//! The interpreter checks every access itself and is never guarded. Unix only (`mmap`,
//! `mprotect`); elsewhere a checked run is refused with a usage error.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use crate::error::{Error, Result};
use crate::loop_ir::BufArg;

/// Set by [`enable_checked_mode`].
static ENABLED: AtomicBool = AtomicBool::new(false);
/// `LCJIT_CHECKED`, read once.
static FROM_ENV: OnceLock<bool> = OnceLock::new();

/// Whether programs prepared now run in checked mode (see the module docs).
pub fn checked_mode() -> bool {
    ENABLED.load(Ordering::Relaxed)
        || *FROM_ENV.get_or_init(|| {
            std::env::var_os("LCJIT_CHECKED").is_some_and(|v| !v.is_empty() && v != "0")
        })
}

/// Turns checked mode on for every program prepared from now on in this process.
pub fn enable_checked_mode() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Which guard page a buffer touches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flush {
    /// The last element ends where the trailing guard page begins.
    End,
    /// The first element starts where the leading guard page ends.
    Start,
}

#[cfg(unix)]
mod map {
    //! One guarded mapping: `[PROT_NONE page | data pages | PROT_NONE page]`.

    use super::Flush;
    use crate::error::{Error, Result};

    /// A buffer of `len` elements (f32, or u16 for 16-bit weights) between two guard
    /// pages; unmapped when dropped.
    pub(super) struct Guarded<T> {
        base: *mut libc::c_void,
        map_len: usize,
        data_pages: usize,
        page: usize,
        data: *mut T,
        len: usize,
    }

    fn page_size() -> usize {
        // SAFETY: `sysconf` has no memory-safety preconditions.
        let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usize::try_from(p)
            .ok()
            .filter(|p| *p >= 4096)
            .unwrap_or(4096)
    }

    fn os_error(what: &str) -> Error {
        Error::internal(format!(
            "checked mode: {what} failed: {}",
            std::io::Error::last_os_error()
        ))
    }

    impl<T: Copy> Guarded<T> {
        /// A guarded copy of `src`, flush against the guard page `flush` names.
        pub(super) fn copy_of(src: &[T], flush: Flush) -> Result<Guarded<T>> {
            let page = page_size();
            let too_big = || Error::internal("checked mode: buffer size overflows");
            let bytes = src
                .len()
                .checked_mul(std::mem::size_of::<T>())
                .ok_or_else(too_big)?;
            let data_pages = bytes.div_ceil(page);
            let map_len = data_pages
                .checked_add(2)
                .and_then(|p| p.checked_mul(page))
                .ok_or_else(too_big)?;
            // SAFETY: an anonymous private mapping at an address of the kernel's choosing
            // touches no existing memory; the result is checked before use.
            let base = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    map_len,
                    libc::PROT_NONE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if base == libc::MAP_FAILED {
                return Err(os_error("mmap"));
            }
            let mut g = Guarded {
                base,
                map_len,
                data_pages,
                page,
                data: std::ptr::null_mut(),
                len: src.len(),
            };
            g.protect(libc::PROT_READ | libc::PROT_WRITE)?;
            let offset = match flush {
                Flush::Start => page,
                Flush::End => page + data_pages * page - bytes,
            };
            // SAFETY: `offset + bytes ≤ (1 + data_pages)·page < map_len`, inside the
            // mapping; `offset` is a multiple of the element size (page sizes and
            // `bytes` are; T is f32 or u16), so the pointer is aligned for T.
            g.data = unsafe { base.cast::<u8>().add(offset).cast::<T>() };
            g.as_mut_slice().copy_from_slice(src);
            Ok(g)
        }

        /// Sets the protection of the data pages.
        fn protect(&self, prot: libc::c_int) -> Result<()> {
            if self.data_pages == 0 {
                return Ok(());
            }
            // SAFETY: the range is the data pages of our own live mapping (page-aligned:
            // `base` is page-aligned and one page precedes them).
            let r = unsafe {
                libc::mprotect(
                    self.base.cast::<u8>().add(self.page).cast(),
                    self.data_pages * self.page,
                    prot,
                )
            };
            if r != 0 {
                return Err(os_error("mprotect"));
            }
            Ok(())
        }

        /// Makes the data read-only (for buffers the program must not write).
        pub(super) fn freeze(&self) -> Result<()> {
            self.protect(libc::PROT_READ)
        }

        /// The data.
        pub(super) fn as_slice(&self) -> &[T] {
            if self.len == 0 {
                return &[];
            }
            // SAFETY: `data` points at `len` initialised elements of our live mapping,
            // readable for as long as `self` lives (`freeze` keeps PROT_READ).
            unsafe { std::slice::from_raw_parts(self.data, self.len) }
        }

        /// The data, writable (only called before [`Guarded::freeze`], or on buffers
        /// never frozen).
        pub(super) fn as_mut_slice(&mut self) -> &mut [T] {
            if self.len == 0 {
                return &mut [];
            }
            // SAFETY: as in `as_slice`; `&mut self` makes the borrow exclusive and the
            // pages are writable (buffers are frozen only after their last write here).
            unsafe { std::slice::from_raw_parts_mut(self.data, self.len) }
        }
    }

    impl<T> Drop for Guarded<T> {
        fn drop(&mut self) {
            // SAFETY: unmaps exactly the mapping made in `copy_of`; no slice into it
            // outlives `self` (they borrow it).
            unsafe {
                libc::munmap(self.base, self.map_len);
            }
        }
    }
}

/// A guarded copy of one buffer of the table.
#[cfg(unix)]
enum Copy {
    /// Read-only f32 data (frozen).
    Read(map::Guarded<f32>),
    /// Writable f32 data.
    Write(map::Guarded<f32>),
    /// Read-only 16-bit data (frozen).
    Half(map::Guarded<u16>, crate::loop_ir::Dtype),
}

/// Runs `run` over guarded copies of `bufs` (twice, see the module docs) and copies the
/// results back into the writable buffers of `bufs`.
#[cfg(unix)]
pub(crate) fn run_checked(
    bufs: &mut [BufArg],
    mut run: impl FnMut(&mut [BufArg]) -> Result<()>,
) -> Result<()> {
    use map::Guarded;
    let mut first: Option<Vec<Copy>> = None;
    for flush in [Flush::End, Flush::Start] {
        let mut copies = Vec::with_capacity(bufs.len());
        for b in bufs.iter() {
            copies.push(match b {
                BufArg::Read(r) => {
                    let g = Guarded::copy_of(r, flush)?;
                    g.freeze()?;
                    Copy::Read(g)
                }
                BufArg::Write(w) => Copy::Write(Guarded::copy_of(w, flush)?),
                BufArg::ReadHalf(h, d) => {
                    let g = Guarded::copy_of(h, flush)?;
                    g.freeze()?;
                    Copy::Half(g, *d)
                }
            });
        }
        let mut args: Vec<BufArg> = copies
            .iter_mut()
            .map(|c| match c {
                Copy::Read(g) => BufArg::Read(g.as_slice()),
                Copy::Write(g) => BufArg::Write(g.as_mut_slice()),
                Copy::Half(g, d) => BufArg::ReadHalf(g.as_slice(), *d),
            })
            .collect();
        run(&mut args)?;
        drop(args);
        match &first {
            None => first = Some(copies),
            Some(f) => compare(f, &copies)?,
        }
    }
    if let Some(f) = first {
        for (b, c) in bufs.iter_mut().zip(&f) {
            if let (BufArg::Write(w), Copy::Write(g)) = (b, c) {
                w.copy_from_slice(g.as_slice());
            }
        }
    }
    Ok(())
}

/// Checks that the two placements wrote the same bits into every writable buffer.
#[cfg(unix)]
fn compare(a: &[Copy], b: &[Copy]) -> Result<()> {
    for (i, pair) in a.iter().zip(b).enumerate() {
        let (Copy::Write(x), Copy::Write(y)) = pair else {
            continue;
        };
        let same = x
            .as_slice()
            .iter()
            .zip(y.as_slice())
            .all(|(p, q)| p.to_bits() == q.to_bits());
        if !same {
            return Err(Error::internal(format!(
                "checked mode: buffer {i} differs between two placements of the same \
                 inputs (the program reads memory outside its buffers or uninitialised data)"
            )));
        }
    }
    Ok(())
}

/// Checked runs need `mmap`; refused elsewhere.
#[cfg(not(unix))]
pub(crate) fn run_checked(
    _bufs: &mut [BufArg],
    _run: impl FnMut(&mut [BufArg]) -> Result<()>,
) -> Result<()> {
    Err(Error::Usage {
        detail: "checked mode (LCJIT_CHECKED, --checked) needs mmap: Unix only".into(),
    })
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    /// Two placements, results copied back, read-only buffers untouched.
    #[test]
    fn copies_in_runs_twice_and_copies_back() {
        let x = vec![1.0f32, 2.0, 3.0];
        let mut y = vec![0.0f32; 3];
        let mut calls = 0;
        let mut bufs = [BufArg::Read(&x), BufArg::Write(&mut y)];
        run_checked(&mut bufs, |args| {
            calls += 1;
            let (a, b) = args.split_at_mut(1);
            let (BufArg::Read(x), BufArg::Write(y)) = (&a[0], &mut b[0]) else {
                panic!("buffer kinds changed");
            };
            for (o, i) in y.iter_mut().zip(x.iter()) {
                *o = i * 2.0;
            }
            Ok(())
        })
        .expect("checked run");
        assert_eq!(calls, 2);
        assert_eq!(y, vec![2.0, 4.0, 6.0]);
        assert_eq!(x, vec![1.0, 2.0, 3.0]);
    }

    /// A result that depends on where the buffer sits is reported, not returned.
    #[test]
    fn placement_dependent_results_are_an_internal_error() {
        let mut y = vec![0.0f32; 5];
        let mut bufs = [BufArg::Write(&mut y)];
        let err = run_checked(&mut bufs, |args| {
            if let BufArg::Write(w) = &mut args[0] {
                w[0] = (w.as_ptr() as usize % 4096) as f32;
            }
            Ok(())
        })
        .expect_err("placements differ");
        assert!(
            err.to_string().contains("differs between two placements"),
            "{err}"
        );
        assert_eq!(y, vec![0.0; 5], "nothing copied back on error");
    }

    /// Empty buffers work (no data pages).
    #[test]
    fn empty_buffers() {
        let mut y: Vec<f32> = Vec::new();
        let mut bufs = [BufArg::Write(&mut y)];
        run_checked(&mut bufs, |_| Ok(())).expect("empty");
    }
}

#[cfg(all(test, unix))]
mod fault_tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    /// The child side of [`an_overrun_faults`]: writes one float past the end of a
    /// guarded buffer, which must kill the process before `exit(0)`.
    fn overrun_probe() {
        let mut y = vec![0.0f32; 3];
        let mut bufs = [BufArg::Write(&mut y)];
        let _ = run_checked(&mut bufs, |args| {
            if let BufArg::Write(w) = &mut args[0] {
                let p = w.as_mut_ptr();
                // SAFETY: deliberately NOT safe: an out-of-bounds store, the access checked
                // mode exists to catch; it lands on the trailing guard page (the first run
                // places the buffer flush against it) and faults before any memory of the
                // process is touched. Only ever run in a child process.
                unsafe { p.add(w.len()).write_volatile(1.0) };
            }
            Ok(())
        });
        std::process::exit(0);
    }

    /// An out-of-bounds store into a guarded buffer faults at once (SIGSEGV or SIGBUS),
    /// checked in a child process of this test binary.
    #[test]
    fn an_overrun_faults() {
        if std::env::var_os("LCJIT_GUARD_PROBE").is_some() {
            overrun_probe();
        }
        let exe = std::env::current_exe().expect("test binary");
        let out = std::process::Command::new(exe)
            .args([
                "--exact",
                "backend::guard::fault_tests::an_overrun_faults",
                "--test-threads=1",
            ])
            .env("LCJIT_GUARD_PROBE", "1")
            .output()
            .expect("child");
        let sig = out.status.signal();
        assert!(
            matches!(sig, Some(libc::SIGSEGV) | Some(libc::SIGBUS)),
            "child ended with {:?}, signal {sig:?}; stderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
