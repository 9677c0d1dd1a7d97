//! The hostile corpus (issue 13, item 6): files and arguments built to make lcjit
//! panic, abort, hang or allocate without bound, each run through the `lcjit` binary
//! under an address-space limit of 2 GiB and a time limit of 10 s.
//!
//! A case passes only when the process *exits* (no signal: an abort on a failed
//! allocation or a stack overflow is a SIGABRT/SIGSEGV, a hang is killed at the
//! deadline) with the expected code: 2 and one `error:` line holding the case's
//! fragment for bad input, 0 for valid unusual input; exit 3 (lcjit's own bug) and a
//! panic never pass. The corpus is generated deterministically by `hostile/gen*.rs`;
//! `tests/hostile/manifest.json` lists every case with its expectation and is checked
//! against the generator (regenerate it with `LCJIT_REGEN_HOSTILE=1`). Set
//! `LCJIT_HOSTILE_DIR` to keep the generated files there.

#[path = "hostile/gen.rs"]
mod gen;
#[path = "hostile/gen_archives.rs"]
mod gen_archives;
#[path = "hostile/gen_h5.rs"]
mod gen_h5;
#[path = "hostile/gen_models.rs"]
mod gen_models;
#[path = "hostile/images.rs"]
mod images;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The address-space limit of every case.
const MEMORY_LIMIT: u64 = 2 << 30;
/// The wall-clock limit of every case.
const TIME_LIMIT: Duration = Duration::from_secs(10);

/// What a case must end with.
#[derive(Clone, Debug, PartialEq)]
pub enum Expect {
    /// Exit 0.
    Success,
    /// Exit 2 with one `error:` line of the given error variant (documentation: the
    /// variant's message shape) holding `fragment`.
    Refused {
        /// The `lcjit::Error` variant (or `clap` for argument parsing).
        variant: String,
        /// Text the message must contain.
        fragment: String,
    },
}

/// One run of `lcjit`.
#[derive(Clone, Debug)]
pub struct Case {
    /// Unique name.
    pub name: String,
    /// Arguments (`@file` in the corpus, `%file` in the scratch directory).
    pub args: Vec<String>,
    /// The expected outcome.
    pub expect: Expect,
}

/// How a case ended.
struct Outcome {
    /// Exit code, `None` when a signal ended it.
    code: Option<i32>,
    /// Signal number, if any.
    signal: Option<i32>,
    stderr: String,
    elapsed: Duration,
    /// Peak resident set in KiB.
    max_rss_kib: i64,
    timed_out: bool,
}

/// The limits of every case, set in the forked child before exec: the address space
/// ([`MEMORY_LIMIT`]) and 20 s of CPU. Only calls setrlimit, which is
/// async-signal-safe and touches no memory of the parent.
fn limit_child() -> std::io::Result<()> {
    let as_limit = libc::rlimit {
        rlim_cur: MEMORY_LIMIT,
        rlim_max: MEMORY_LIMIT,
    };
    let cpu = libc::rlimit {
        rlim_cur: 20,
        rlim_max: 20,
    };
    // SAFETY: setrlimit reads the two structs above and changes only this process.
    if unsafe { libc::setrlimit(libc::RLIMIT_AS, &as_limit) } != 0
        || unsafe { libc::setrlimit(libc::RLIMIT_CPU, &cpu) } != 0
    {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `lcjit args` under the limits and waits for it (see the module docs).
fn run_limited(args: &[String], scratch: &Path) -> Outcome {
    use std::os::unix::process::CommandExt;
    let stderr_path = scratch.join("stderr.txt");
    let stderr_file = std::fs::File::create(&stderr_path).expect("stderr file");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lcjit"));
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr_file);
    // SAFETY: the closure runs in the forked child before exec and only calls
    // setrlimit, which is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(limit_child);
    }
    let start = Instant::now();
    let child = cmd.spawn().expect("spawn lcjit");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data, filled in by wait4.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let mut timed_out = false;
    loop {
        // SAFETY: waits for our own child; status and usage are valid out-pointers.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            break;
        }
        assert!(r == 0, "wait4 failed: {}", std::io::Error::last_os_error());
        if start.elapsed() > TIME_LIMIT {
            timed_out = true;
            // SAFETY: kills our own child, then reaps it.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::wait4(pid, &mut status, 0, &mut usage);
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let elapsed = start.elapsed();
    drop(child);
    let (code, signal) = if libc::WIFEXITED(status) {
        (Some(libc::WEXITSTATUS(status)), None)
    } else if libc::WIFSIGNALED(status) {
        (None, Some(libc::WTERMSIG(status)))
    } else {
        (None, None)
    };
    Outcome {
        code,
        signal,
        stderr: std::fs::read_to_string(&stderr_path).unwrap_or_default(),
        elapsed,
        max_rss_kib: usage.ru_maxrss,
        timed_out,
    }
}

/// The peak resident set of `lcjit args` in KiB, for `LCJIT_HOSTILE_REPORT`, measured by
/// GNU time (`/usr/bin/time -f %M`) under the same address-space limit; `None` without it.
///
/// Why not [`Outcome::max_rss_kib`]: Linux carries a process's high-water mark across
/// `exec` (`exec_mmap` keeps the larger of the old and new), and a child forked from this
/// test starts with the test's own resident set, so `wait4`'s `ru_maxrss` never reads
/// below the test harness's size (57 MiB here). GNU time forks lcjit from a small
/// process, so its figure is lcjit's own to within time's few hundred KiB.
fn peak_rss_kib(args: &[String], scratch: &Path) -> Option<u64> {
    use std::os::unix::process::CommandExt;
    let time = Path::new("/usr/bin/time");
    if !time.exists() {
        return None;
    }
    let out = scratch.join("peak.txt");
    let mut cmd = Command::new(time);
    cmd.arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&out)
        .arg(env!("CARGO_BIN_EXE_lcjit"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: as in `run_limited`: only setrlimit between fork and exec.
    unsafe {
        cmd.pre_exec(limit_child);
    }
    let mut child = cmd.spawn().ok()?;
    let start = Instant::now();
    while child.try_wait().ok()?.is_none() {
        if start.elapsed() > TIME_LIMIT {
            // Only GNU time is killed; a stuck lcjit ends at its CPU limit (and the case
            // has failed `run_limited` already).
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // GNU time writes "Command exited with non-zero status N" before the figure.
    std::fs::read_to_string(&out)
        .ok()?
        .lines()
        .last()?
        .trim()
        .parse()
        .ok()
}

/// `@name` → corpus path, `%name` → scratch path.
fn resolve(args: &[String], corpus: &Path, scratch: &Path) -> Vec<String> {
    args.iter()
        .map(|a| {
            if let Some(f) = a.strip_prefix('@') {
                corpus.join(f).display().to_string()
            } else if let Some(f) = a.strip_prefix('%') {
                scratch.join(f).display().to_string()
            } else {
                a.clone()
            }
        })
        .collect()
}

/// Why the outcome does not meet the case's expectation, if it does not.
fn judge(case: &Case, o: &Outcome) -> Option<String> {
    if o.timed_out {
        return Some(format!("hung: killed after {:?}", o.elapsed));
    }
    if let Some(sig) = o.signal {
        return Some(format!("killed by signal {sig}: {}", o.stderr.trim()));
    }
    if o.stderr.contains("panic") || o.stderr.contains("internal compiler error") {
        return Some(format!("an internal error: {}", o.stderr.trim()));
    }
    let errors: Vec<&str> = o
        .stderr
        .lines()
        .filter(|l| l.starts_with("error"))
        .collect();
    match &case.expect {
        Expect::Success if o.code == Some(0) => None,
        Expect::Success => Some(format!(
            "expected exit 0, got {:?}: {}",
            o.code,
            o.stderr.trim()
        )),
        Expect::Refused { fragment, .. } => {
            if o.code != Some(2) {
                return Some(format!(
                    "expected exit 2, got {:?}: {}",
                    o.code,
                    o.stderr.trim()
                ));
            }
            if errors.len() != 1 {
                return Some(format!("expected one error line: {}", o.stderr.trim()));
            }
            if !errors[0].contains(fragment.as_str()) {
                return Some(format!("message lacks '{fragment}': {}", errors[0]));
            }
            None
        }
    }
}

/// The manifest: every case with its expectation, one JSON object per case.
fn manifest(cases: &[Case]) -> String {
    let rows: Vec<serde_json::Value> = cases
        .iter()
        .map(|c| {
            let (exit, variant, fragment) = match &c.expect {
                Expect::Success => (0, String::new(), String::new()),
                Expect::Refused { variant, fragment } => (2, variant.clone(), fragment.clone()),
            };
            serde_json::json!({"name": c.name, "args": c.args, "exit": exit,
                               "variant": variant, "message_contains": fragment})
        })
        .collect();
    let mut text = serde_json::to_string_pretty(&rows).expect("manifest JSON");
    text.push('\n');
    text
}

fn corpus_dir() -> (PathBuf, bool) {
    match std::env::var_os("LCJIT_HOSTILE_DIR") {
        Some(d) => (PathBuf::from(d), true),
        None => (
            std::env::temp_dir().join(format!("lcjit-hostile-{}", std::process::id())),
            false,
        ),
    }
}

#[test]
fn hostile_corpus() {
    let (dir, keep) = corpus_dir();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("corpus dir");
    let cases = gen::generate(&dir);
    let files = std::fs::read_dir(&dir).expect("list").count();
    assert!(files >= 150, "only {files} corpus files");

    let manifest_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hostile/manifest.json");
    let text = manifest(&cases);
    if std::env::var_os("LCJIT_REGEN_HOSTILE").is_some() {
        std::fs::write(&manifest_path, &text).expect("write manifest");
    }
    let committed = std::fs::read_to_string(&manifest_path).unwrap_or_default();
    assert!(
        committed == text,
        "tests/hostile/manifest.json is out of date: rerun with LCJIT_REGEN_HOSTILE=1"
    );
    let mut names = std::collections::HashSet::new();
    for c in &cases {
        assert!(names.insert(c.name.as_str()), "duplicate case {}", c.name);
    }

    let only = std::env::var("LCJIT_HOSTILE_ONLY").ok();
    let report_path = std::env::var("LCJIT_HOSTILE_REPORT").ok();
    let mut failures = Vec::new();
    let mut report = Vec::new();
    for case in &cases {
        if only.as_deref().is_some_and(|o| !case.name.contains(o)) {
            continue;
        }
        let scratch = dir.join(format!("scratch-{}", case.name));
        std::fs::create_dir_all(&scratch).expect("scratch");
        let args = resolve(&case.args, &dir, &scratch);
        let outcome = run_limited(&args, &scratch);
        let last = outcome.stderr.lines().last().unwrap_or("").to_owned();
        if report_path.is_some() {
            let peak =
                peak_rss_kib(&args, &scratch).map_or_else(|| "-".to_owned(), |k| k.to_string());
            report.push(format!(
                "{:<40} exit {:?} {:>7.0} ms {:>8} KiB peak {:>8} KiB ru_maxrss  {last}",
                case.name,
                outcome.code,
                outcome.elapsed.as_secs_f64() * 1e3,
                peak,
                outcome.max_rss_kib
            ));
        }
        if let Some(why) = judge(case, &outcome) {
            failures.push(format!("{}: {why}", case.name));
        }
        let _ = std::fs::remove_dir_all(&scratch);
    }
    if let Some(p) = report_path {
        std::fs::write(p, report.join("\n") + "\n").expect("report");
    }
    if !keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    assert!(
        failures.is_empty(),
        "{} of {} hostile cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
