//! `.npy` files too large to hold twice: inputs memory-mapped and read batch by batch,
//! outputs written row block by row block.
//!
//! * [`NpyInput`] maps a little-endian `f32` C-order file (what numpy writes for
//!   `float32` on every common machine) and views it in place: a batch of samples is a
//!   contiguous slice of the page cache, never a copy. Any other element type, byte order
//!   or Fortran order falls back to [`super::read_npy`] (one converted copy in memory),
//!   and [`NpyInput::note`] says why. A corrupt file gets the same [`Error::Format`] as
//!   from `read_npy`, since the fallback reports it.
//! * [`NpyWriter`] writes the header for the final shape first, then rows as they come,
//!   to a temporary file renamed into place by [`NpyWriter::finish`] once every row is
//!   written; a writer dropped before that removes its temporary, so a failed run never
//!   leaves a partial output behind (the rule of every writer in [`crate::io`]).

use std::cell::Cell;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use memmap2::{Mmap, UncheckedAdvice};
use ndarray::{ArrayD, ArrayViewD};
use ndarray_npy::npy::header::{Header, Layout};
use ndarray_npy::{ViewNpyExt, WritableElement};

use crate::error::{Error, Result};

/// How many bytes of consumed input [`NpyInput::release_rows_before`] lets accumulate
/// before handing them back: small next to any input worth mapping, large enough that
/// the system calls cost nothing.
const RELEASE_STEP: usize = 8 << 20;

/// An input `.npy` file, memory-mapped where possible (see the module docs).
pub struct NpyInput {
    data: Data,
    path: PathBuf,
    note: Option<String>,
    /// Bytes of the mapping already handed back by [`NpyInput::release_rows_before`].
    released: Cell<usize>,
}

enum Data {
    Mapped(Mmap),
    Owned(ArrayD<f32>),
}

impl NpyInput {
    /// Opens `path`: maps it when it holds little-endian `f32` in C order, else reads it
    /// whole with [`super::read_npy`]. Errors as `read_npy`.
    pub fn open(path: &Path) -> Result<NpyInput> {
        Self::open_within(path, crate::budget::default_memory_budget())
    }

    /// [`NpyInput::open`] within a memory budget: a mapped file takes no memory of its
    /// own (its pages are the page cache's, handed back batch by batch), so the budget
    /// bounds only the fallback read. Either way the file must be a regular file, and its
    /// header is validated before the mapping is viewed.
    pub fn open_within(path: &Path, budget: u64) -> Result<NpyInput> {
        let (file, _) = crate::io::open_regular(path, u64::MAX)?;
        // SAFETY: the mapping is read-only and private to this process; what memmap2
        // cannot rule out is another process truncating or rewriting the file while it
        // is mapped. lcjit never writes its own inputs, and an input changed under a
        // running prediction is outside what any reader can make sense of; a view is
        // only ever read as plain f32 values, for which every bit pattern is valid.
        let map = unsafe { Mmap::map(&file) };
        if let Ok(m) = &map {
            // ndarray-npy trusts the header's shape; a corrupt one is refused here.
            super::parse_header(m).map_err(|d| Error::format(path, "npy", d))?;
        }
        let reason = match &map {
            Ok(m) => match ArrayViewD::<f32>::view_npy(m) {
                Ok(v) if v.is_standard_layout() => None,
                Ok(_) => Some("it is in Fortran order".to_owned()),
                Err(e) => Some(e.to_string()),
            },
            Err(e) => Some(format!("it cannot be mapped: {e}")),
        };
        match (map, reason) {
            (Ok(m), None) => Ok(NpyInput {
                data: Data::Mapped(m),
                path: path.to_path_buf(),
                note: None,
                released: Cell::new(0),
            }),
            (_, reason) => {
                let array = super::read_npy_within(path, budget)?;
                Ok(NpyInput {
                    data: Data::Owned(array),
                    path: path.to_path_buf(),
                    released: Cell::new(0),
                    note: reason.map(|r| {
                        format!(
                            "{} is read into memory, not memory-mapped \
                             (only little-endian f32 C-order files are): {r}",
                            path.display()
                        )
                    }),
                })
            }
        }
    }

    /// The whole array, `(N, sample shape…)`, in standard layout.
    pub fn view(&self) -> Result<ArrayViewD<'_, f32>> {
        match &self.data {
            Data::Owned(a) => Ok(a.view()),
            Data::Mapped(m) => ArrayViewD::<f32>::view_npy(m)
                .map_err(|e| Error::format(&self.path, "npy", e.to_string())),
        }
    }

    /// Tells the kernel that samples `0..row` will not be read again, so their pages
    /// leave this process's resident set (they stay in the page cache). Without this a
    /// run over a mapped input would end with the whole file resident; with it, after
    /// each batch, the resident input is about one batch. A no-op for inputs in memory.
    pub fn release_rows_before(&self, row: usize) -> Result<()> {
        let Data::Mapped(m) = &self.data else {
            return Ok(());
        };
        let view = self.view()?;
        let row_bytes = 4 * view.shape().iter().skip(1).product::<usize>();
        // The data is the end of the file, after the header.
        let data_start = m.len() - 4 * view.len();
        let end = (data_start + row.min(view.shape().first().copied().unwrap_or(0)) * row_bytes)
            .min(m.len());
        let start = self.released.get();
        // One system call per RELEASE_STEP bytes, not per batch, and always at the end.
        if end <= start || (end - start < RELEASE_STEP && end < m.len()) {
            return Ok(());
        }
        // SAFETY: MADV_DONTNEED on a shared, read-only file mapping (what `Mmap::map`
        // makes) only drops this process's page-table entries: a later read of the
        // range refaults the same bytes from the file, so views into the mapping keep
        // reading exactly what they read before. (The hazard memmap2 warns about is
        // private or anonymous mappings, whose contents it would reset.)
        unsafe { m.unchecked_advise_range(UncheckedAdvice::DontNeed, start, end - start) }
            .map_err(|e| Error::io(&self.path, e))?;
        self.released.set(end);
        Ok(())
    }

    /// Whether the data is read from the mapping (no copy in memory).
    pub fn is_mapped(&self) -> bool {
        matches!(self.data, Data::Mapped(_))
    }

    /// Why the file was read into memory instead of mapped, if it was.
    pub fn note(&self) -> Option<&str> {
        self.note.as_deref()
    }
}

/// Writes an `f32` `.npy` file of a known shape block by block (see the module docs).
pub struct NpyWriter {
    path: PathBuf,
    /// The output (temporary renamed into place, or a device written in place; see
    /// `crate::write_file`), `None` once finished.
    out: Option<crate::write_file::OutputFile>,
    /// Floats per row (product of the shape after the first axis).
    row_len: usize,
    /// Floats the header promises, and floats written so far.
    total: usize,
    written: usize,
}

impl NpyWriter {
    /// Starts `path` for an array of `shape` (C order): the header is written now, the
    /// data by [`NpyWriter::write`], in order.
    pub fn create(path: &Path, shape: &[usize]) -> Result<NpyWriter> {
        let header = Header {
            type_descriptor: <f32 as WritableElement>::type_descriptor(),
            layout: Layout::Standard,
            shape: shape.to_vec(),
        }
        .to_bytes()
        .map_err(|e| Error::io(path, io::Error::other(format!("npy header: {e}"))))?;
        let total = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| Error::internal(format!("output shape {shape:?} overflows")))?;
        let mut out = crate::write_file::OutputFile::create(path)?;
        out.writer()?
            .write_all(&header)
            .map_err(|e| Error::io(path, e))?;
        Ok(NpyWriter {
            path: path.to_path_buf(),
            out: Some(out),
            row_len: shape.iter().skip(1).product(),
            total,
            written: 0,
        })
    }

    /// Appends whole rows (a multiple of the row length) after those written so far.
    pub fn write(&mut self, data: &[f32]) -> Result<()> {
        if (self.row_len > 0 && !data.len().is_multiple_of(self.row_len))
            || self.written + data.len() > self.total
        {
            return Err(Error::internal(format!(
                "npy writer: {} floats do not fit rows of {} ({} of {} written)",
                data.len(),
                self.row_len,
                self.written,
                self.total
            )));
        }
        let out = self
            .out
            .as_mut()
            .ok_or_else(|| Error::internal("npy writer already finished"))?;
        f32::write_slice(data, out.writer()?)
            .map_err(|e| Error::io(&self.path, io::Error::other(e.to_string())))?;
        self.written += data.len();
        Ok(())
    }

    /// Checks that every row was written, syncs the file and renames it into place.
    pub fn finish(mut self) -> Result<()> {
        if self.written != self.total {
            return Err(Error::internal(format!(
                "npy writer: {} of {} floats written",
                self.written, self.total
            )));
        }
        let out = self
            .out
            .take()
            .ok_or_else(|| Error::internal("npy writer already finished"))?;
        out.commit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{read_npy, test_dir, write_npy};
    use ndarray::IxDyn;
    use std::fs;

    fn arr(shape: &[usize]) -> ArrayD<f32> {
        let n: usize = shape.iter().product();
        ArrayD::from_shape_vec(IxDyn(shape), (0..n).map(|i| i as f32 * 0.5 - 3.0).collect())
            .expect("shape")
    }

    #[test]
    fn f32_c_order_is_mapped_and_others_fall_back() {
        let dir = test_dir("npy-map");
        let p = dir.join("x.npy");
        let a = arr(&[5, 3, 2]);
        write_npy(&p, &a).expect("write");
        let input = NpyInput::open(&p).expect("open");
        assert!(input.is_mapped() && input.note().is_none());
        assert_eq!(input.view().expect("view"), a.view());
        // f64 and Fortran order are read into memory, converted, with a note.
        let q = dir.join("y.npy");
        ndarray_npy::write_npy(&q, &a.mapv(f64::from)).expect("f64");
        let input = NpyInput::open(&q).expect("open f64");
        assert!(!input.is_mapped() && input.note().is_some());
        assert_eq!(input.view().expect("view"), a.view());
        let f = dir.join("f.npy");
        ndarray_npy::write_npy(&f, &a.t().to_owned().reversed_axes()).expect("fortran");
        let input = NpyInput::open(&f).expect("open fortran");
        assert_eq!(input.view().expect("view"), a.view());
        // A corrupt file is the reader's Format error.
        let c = dir.join("c.npy");
        fs::write(&c, b"\x93NUMPY garbage").expect("write");
        let e = NpyInput::open(&c).err().expect("corrupt");
        assert!(matches!(e, Error::Format { .. }), "{e}");
    }

    #[test]
    fn writer_streams_rows_and_renames_only_when_complete() {
        let dir = test_dir("npy-writer");
        let p = dir.join("y.npy");
        let a = arr(&[7, 4]);
        let data = a.as_slice().expect("standard");
        let mut w = NpyWriter::create(&p, a.shape()).expect("create");
        w.write(&data[..12]).expect("rows 0..3");
        assert!(!p.exists(), "not renamed before finish");
        w.write(&data[12..]).expect("rows 3..7");
        assert!(w.write(&data[..4]).is_err(), "past the end");
        w.finish().expect("finish");
        assert_eq!(read_npy(&p).expect("read"), a);
        // A writer dropped early leaves neither the file nor its temporary.
        let q = dir.join("z.npy");
        let mut w = NpyWriter::create(&q, &[2, 4]).expect("create");
        w.write(&data[..4]).expect("one row");
        assert!(w.write(&data[..3]).is_err(), "partial row");
        drop(w);
        assert!(!q.exists());
        assert_eq!(fs::read_dir(&dir).expect("list").count(), 1);
        // finish before every row is written is refused, and cleans up.
        let w = NpyWriter::create(&q, &[2, 4]).expect("create");
        assert!(w.finish().is_err());
        assert_eq!(fs::read_dir(&dir).expect("list").count(), 1);
    }
}
