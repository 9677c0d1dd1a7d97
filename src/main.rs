//! The `lcjit` command-line tool.
//!
//! Exit codes: 0 on success, 2 on bad input or usage (one line `error: …` on stderr that
//! names the file, layer and field), 3 on an internal error of lcjit, 128 + the signal
//! number when SIGINT or SIGTERM ended the run. Nothing panics on
//! user input; a panic anyway (a bug) is caught and reported as an internal error.

use clap::Parser;
use std::process::ExitCode;

mod cli;
mod default_job;

use cli::{run, Cli};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                print!("{e}");
                return ExitCode::SUCCESS;
            }
            // One line, as every other error: clap's first line plus a pointer to --help.
            // Clap's message may continue on indented lines (e.g. the missing arguments);
            // keep everything before the usage block on one line.
            let text = e.render().to_string();
            let parts: Vec<&str> = text
                .lines()
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            let joined = parts.join(" ");
            let msg = joined.strip_prefix("error: ").unwrap_or(&joined);
            eprintln!("error: {msg} (see lcjit --help)");
            return ExitCode::from(2);
        }
    };
    keep_freed_memory();
    // SIGINT/SIGTERM: partial outputs are removed, `fit` stops cleanly (before any other
    // thread starts, so every thread inherits the blocked mask). Without the watcher the
    // default action applies, as before.
    let _ = lcjit::interrupt::install();
    // A panic is a bug; report it as one line instead of a backtrace dump.
    std::panic::set_hook(Box::new(|_| {}));
    match std::panic::catch_unwind(|| run(cli)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("error: {}", e.to_string().replace('\n', " "));
            if let lcjit::Error::Interrupted { .. } = e {
                // As the shell reports a process ended by the signal: 128 + its number.
                let sig = lcjit::interrupt::signal().clamp(1, 127);
                return ExitCode::from(128 + sig as u8);
            }
            ExitCode::from(if e.is_internal() { 3 } else { 2 })
        }
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            eprintln!("error: internal compiler error: panic: {msg}");
            ExitCode::from(3)
        }
    }
}

/// Keeps the memory a command frees for its next allocations (glibc). By default glibc
/// serves blocks of a few MB with fresh `mmap`s or returns the top of its heap to the
/// kernel, so every training step's model outputs, loss gradients and copies (3–6 MB each
/// at batch 32 for a bare LC stack) were fresh pages: one page fault per 4 KiB, and for a
/// page first read as zeros then written, a TLB shootdown to the other worker. Measured
/// on seed_lc2d's training step (2 threads, alternating runs): 36–39 → 32–34 ms with
/// these settings. Blocks up to 32 MiB (glibc's largest mmap threshold) come from the
/// heap, and the heap is never trimmed: a command's resident memory stays at its peak,
/// which for a one-job process is what it needs anyway. The Python package leaves its
/// host process's allocator alone.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    // SAFETY: `mallopt` only sets allocator parameters (it takes the arena lock, so it is
    // safe with other threads running); a refused value leaves the default in place.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}
