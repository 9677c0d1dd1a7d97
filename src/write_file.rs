//! Writing output files without leaving damage or debris behind.
//!
//! [`write_atomic`] is the one way lcjit writes a file it produces:
//!
//! - a **new path or a regular file** is written through a temporary sibling
//!   `.<name>.<pid>.<n>.tmp` that is flushed, synced and renamed over the destination only
//!   when the whole write succeeded (staying in the same directory keeps the rename on one
//!   file system, where it replaces the destination in one step). The temporary is
//!   removed on any error and, through [`crate::interrupt`]'s registry, when SIGINT or
//!   SIGTERM ends the process;
//! - a **symbolic link** is followed: its target is replaced, the link kept;
//! - an existing path that is **not a regular file is never replaced by one** (as root,
//!   `--output /dev/null` must not swap the system's `/dev/null` for a file): character
//!   devices (`/dev/null`, `/dev/stdout`, a terminal) and FIFOs are written in place,
//!   streaming — there is nothing to make atomic, a reader sees the bytes as they come;
//!   directories, block devices and sockets are refused.

use crate::error::{Error, Result};
use crate::interrupt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes `path` with `write` (see the module docs for what happens per kind of path).
pub fn write_atomic<F>(path: &Path, write: F) -> Result<()>
where
    F: FnOnce(&mut BufWriter<File>) -> io::Result<()>,
{
    let mut out = OutputFile::create(path)?;
    let w = out.writer()?;
    write(w).map_err(|e| Error::io(path, e))?;
    out.commit()
}

/// An output being written: a registered temporary renamed into place by
/// [`OutputFile::commit`], or an existing device or FIFO written in place. Dropped
/// without a commit (an error stopped the writer), it removes its temporary.
#[derive(Debug)]
pub struct OutputFile {
    /// The path as given (for messages).
    path: PathBuf,
    /// Where the result goes (`path`, or the target of a symbolic link).
    target: PathBuf,
    /// The temporary, when writing atomically.
    tmp: Option<PathBuf>,
    out: Option<BufWriter<File>>,
}

impl OutputFile {
    /// Starts writing `path` (see the module docs).
    pub fn create(path: &Path) -> Result<OutputFile> {
        let target = follow_link(path);
        if let Ok(meta) = fs::metadata(&target) {
            if !meta.is_file() {
                let file = open_in_place(path, &target, &meta)?;
                return Ok(OutputFile {
                    path: path.to_path_buf(),
                    target,
                    tmp: None,
                    out: Some(BufWriter::new(file)),
                });
            }
        }
        let tmp = temp_sibling(&target)?;
        let file = interrupt::create_temp(&tmp, |p| {
            OpenOptions::new().write(true).create_new(true).open(p)
        })
        .map_err(|e| Error::io(path, e))?;
        Ok(OutputFile {
            path: path.to_path_buf(),
            target,
            tmp: Some(tmp),
            out: Some(BufWriter::new(file)),
        })
    }

    /// The buffered writer.
    pub fn writer(&mut self) -> Result<&mut BufWriter<File>> {
        self.out
            .as_mut()
            .ok_or_else(|| Error::internal("output file already committed"))
    }

    /// The path as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Flushes and, for a temporary, syncs it and renames it over the destination.
    pub fn commit(mut self) -> Result<()> {
        let out = self
            .out
            .take()
            .ok_or_else(|| Error::internal("output file already committed"))?;
        let result = (|| {
            let file = out.into_inner().map_err(|e| e.into_error())?;
            if let Some(tmp) = &self.tmp {
                file.sync_all()?;
                drop(file);
                interrupt::finish_temp(tmp, || fs::rename(tmp, &self.target))?;
            }
            Ok(())
        })();
        result.map_err(|e: io::Error| Error::io(&self.path, e))
    }
}

impl Drop for OutputFile {
    fn drop(&mut self) {
        // Also after a failed commit: the temporary may already be gone (best effort).
        if let Some(tmp) = &self.tmp {
            if self.out.take().is_some() || fs::symlink_metadata(tmp).is_ok() {
                let _ = interrupt::finish_temp(tmp, || fs::remove_file(tmp));
            }
        }
    }
}

/// The target of `path` when it is a symbolic link to an existing file, else `path`.
fn follow_link(path: &Path) -> PathBuf {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
        }
        _ => path.to_path_buf(),
    }
}

/// Opens an existing character device or FIFO for writing in place (no truncation, no
/// creation); refuses other non-regular files.
fn open_in_place(path: &Path, target: &Path, meta: &fs::Metadata) -> Result<File> {
    use std::os::unix::fs::FileTypeExt;
    let ft = meta.file_type();
    if !(ft.is_char_device() || ft.is_fifo()) {
        let what = if ft.is_dir() {
            "a directory"
        } else if ft.is_block_device() {
            "a block device"
        } else {
            "not a regular file, character device or FIFO"
        };
        return Err(Error::io(
            path,
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{what}: refusing to write an output there"),
            ),
        ));
    }
    OpenOptions::new()
        .write(true)
        .open(target)
        .map_err(|e| Error::io(path, e))
}

/// A fresh temporary name next to `path`: `.<name>.<pid>.<n>.tmp`.
pub fn temp_sibling(path: &Path) -> Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().ok_or_else(|| {
        Error::io(
            path,
            io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"),
        )
    })?;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.{n}.tmp", std::process::id()));
    Ok(path.with_file_name(tmp_name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("lcjit-wf-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).expect("dir");
        d
    }

    fn debris(d: &Path) -> Vec<String> {
        fs::read_dir(d)
            .expect("read dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.ends_with(".tmp"))
            .collect()
    }

    #[test]
    fn failed_write_keeps_the_old_file_and_leaves_no_temporary() {
        let d = dir("fail");
        let p = d.join("out.bin");
        fs::write(&p, b"old").expect("seed");
        let e = write_atomic(&p, |w| {
            w.write_all(b"partial")?;
            Err(io::Error::other("boom"))
        });
        assert!(e.is_err());
        assert_eq!(fs::read(&p).expect("read"), b"old");
        assert!(debris(&d).is_empty(), "{:?}", debris(&d));
        write_atomic(&p, |w| w.write_all(b"new")).expect("write");
        assert_eq!(fs::read(&p).expect("read"), b"new");
        assert!(debris(&d).is_empty());
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn dev_null_stays_a_device() {
        use std::os::unix::fs::FileTypeExt;
        write_atomic(Path::new("/dev/null"), |w| w.write_all(b"x")).expect("write");
        let m = fs::metadata("/dev/null").expect("meta");
        assert!(m.file_type().is_char_device());
    }

    #[test]
    fn a_symlink_keeps_pointing_at_its_replaced_target() {
        let d = dir("link");
        let target = d.join("real.bin");
        fs::write(&target, b"old").expect("seed");
        let link = d.join("link.bin");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        write_atomic(&link, |w| w.write_all(b"new")).expect("write");
        assert!(fs::symlink_metadata(&link)
            .expect("meta")
            .file_type()
            .is_symlink());
        assert_eq!(fs::read(&target).expect("read"), b"new");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_directory_is_refused() {
        let d = dir("isdir");
        let e = write_atomic(&d, |w| w.write_all(b"x")).expect_err("must refuse");
        assert!(e.to_string().contains("a directory"), "{e}");
        assert!(d.is_dir());
        let _ = fs::remove_dir_all(&d);
    }
}
