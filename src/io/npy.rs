//! `.npy` and `.npz` files (numpy's own formats) as `f32` arrays.
//!
//! Parsing is ndarray-npy's and zip handling is the zip crate's; this file adds what a
//! tool reading untrusted files needs around them:
//!
//! * **No allocation on a header's word.** Before ndarray-npy allocates the array, the
//!   element count × item size the header claims is checked against the bytes the file
//!   (or npz entry) really holds, so a corrupt shape cannot ask for terabytes.
//! * **Every error names the file** (and the npz entry), and is [`Error::Io`] only when the
//!   operating system failed; anything wrong with the contents is [`Error::Format`].
//! * **Every array returned is in standard (C) layout**, whatever order the file used, and
//!   every element type numpy commonly writes (floats, integers, bool) is converted to `f32`.
//! * **Writes are atomic** (see `io::write_atomic`).

mod header;
pub mod stream;

use std::io::{self, Read};
use std::path::Path;

use ndarray::ArrayD;
use ndarray_npy::npy::header::{Header, ReadHeaderError};
use ndarray_npy::{NpzWriter, ReadNpyError, ReadNpyExt, WriteNpyExt};

use crate::error::{Error, Result};
use crate::size;

/// The format name used in errors about `.npy` files.
const NPY: &str = "npy";
/// The format name used in errors about `.npz` files.
const NPZ: &str = "npz";

/// Reads a `.npy` file as an `f32` array in standard layout, within the default memory
/// budget (see [`read_npy_within`]).
///
/// Accepts `f32`, `f64`, signed and unsigned integers of 1 to 8 bytes and `bool`, either
/// byte order, C or Fortran order; every value is converted to `f32` (`true` is 1.0).
/// A missing or unreadable file is [`Error::Io`]; anything wrong inside it (bad magic,
/// truncated data, extra bytes, an unsupported element type) is [`Error::Format`].
pub fn read_npy(path: &Path) -> Result<ArrayD<f32>> {
    read_npy_within(path, crate::budget::default_memory_budget())
}

/// [`read_npy`] within `budget` bytes: the file must be a regular file whose bytes plus
/// the `f32` array they decode to fit the budget, checked from the file's size and its
/// header before the data is read.
pub fn read_npy_within(path: &Path, budget: u64) -> Result<ArrayD<f32>> {
    let (mut file, len) = super::open_regular(path, budget)?;
    let mut prefix = Vec::new();
    let info = read_header_prefix(&mut file, &mut prefix)
        .map_err(|detail| Error::format(path, NPY, detail))?;
    // A header promising more (or less) data than the file holds is a broken file,
    // whatever the budget; said before the budget is consulted.
    check_data_len(len.saturating_sub(prefix.len() as u64), info.data_bytes)
        .map_err(|detail| Error::format(path, NPY, detail))?;
    // The file's bytes, the array ndarray-npy decodes and its f32 conversion coexist.
    let need = size::add64(len, info.data_bytes)
        .and_then(|n| size::add64(n, info.f32_bytes))
        .unwrap_or(u64::MAX);
    if need > budget {
        return Err(Error::file_budget(
            path,
            format!("reading the array of shape {:?}", info.shape),
            u128::from(need),
            budget,
        ));
    }
    let mut bytes = Vec::with_capacity(size::to_usize(len).unwrap_or(0));
    bytes.extend_from_slice(&prefix);
    file.take(len.saturating_sub(prefix.len() as u64))
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    parse_npy(&bytes).map_err(|detail| Error::format(path, NPY, detail))
}

/// Writes `a` to `path` as a little-endian `f32` `.npy` file.
///
/// The file is written under a temporary name in the same directory and renamed into
/// place, so an existing file is never left half-written.
pub fn write_npy(path: &Path, a: &ArrayD<f32>) -> Result<()> {
    super::write_atomic(path, |w| {
        a.write_npy(w)
            .map_err(|e| io::Error::other(format!("writing npy data: {e}")))
    })
}

/// Reads every array of a `.npz` archive, in archive order, within the default memory
/// budget (see [`read_npz_within`]).
///
/// Keys are the entry names without their `.npy` suffix, as `numpy.load` gives them.
/// Each entry is checked like a `.npy` file (see [`read_npy`]), its header against the
/// entry's uncompressed size.
pub fn read_npz(path: &Path) -> Result<Vec<(String, ArrayD<f32>)>> {
    read_npz_within(path, crate::budget::default_memory_budget())
}

/// [`read_npz`] within `budget` bytes.
///
/// Two passes: the first inflates only each entry's `.npy` header and adds up what the
/// arrays will take (the `f32` arrays, plus the largest entry's raw bytes while it is
/// decoded), refusing the archive before any entry is inflated whole; the second reads
/// the entries, each capped at its declared size. An entry that inflates to gigabytes
/// is thus refused by its header, or stopped at the size it declared.
pub fn read_npz_within(path: &Path, budget: u64) -> Result<Vec<(String, ArrayD<f32>)>> {
    let (file, _) = super::open_regular(path, budget)?;
    let mut archive = zip::ZipArchive::new(io::BufReader::new(file))
        .map_err(|e| zip_error(path, NPZ, "reading the zip directory", e))?;
    read_archive_arrays(path, NPZ, &mut archive, budget, &|_| true)
}

/// The `.npy` entries of an open zip archive that `keep` selects by entry name, as
/// [`read_npz_within`] reads them (two passes; the arrays, and the largest entry while
/// it is decoded, within `budget`); keys without the `.npy` suffix. Errors name the
/// file as a `format` file.
pub(crate) fn read_archive_arrays<R: Read + io::Seek>(
    path: &Path,
    format: &'static str,
    archive: &mut zip::ZipArchive<R>,
    budget: u64,
    keep: &dyn Fn(&str) -> bool,
) -> Result<Vec<(String, ArrayD<f32>)>> {
    let mut arrays = 0u64;
    // The f32 arrays accumulate; one entry's bytes and decoded array exist at a time.
    let mut largest_transient = 0u64;
    for index in 0..archive.len() {
        let mut entry = archive
            .by_index(index)
            .map_err(|e| zip_error(path, format, &format!("opening entry #{index}"), e))?;
        if entry.is_dir() || !keep(entry.name()) {
            continue;
        }
        let name = entry.name().to_owned();
        let declared = entry.size();
        let mut prefix = Vec::new();
        let info = read_header_prefix(&mut entry, &mut prefix)
            .and_then(|info| {
                check_data_len(
                    declared.saturating_sub(prefix.len() as u64),
                    info.data_bytes,
                )?;
                Ok(info)
            })
            .map_err(|d| Error::format(path, format, format!("entry '{name}': {d}")))?;
        arrays = size::add64(arrays, info.f32_bytes).unwrap_or(u64::MAX);
        largest_transient = largest_transient.max(declared.saturating_add(info.data_bytes));
        let need = arrays.saturating_add(largest_transient);
        if need > budget {
            return Err(Error::file_budget(
                path,
                format!(
                    "entry '{name}' (shape {:?}, {declared} bytes uncompressed) with the entries before it",
                    info.shape
                ),
                u128::from(need),
                budget,
            ));
        }
    }
    let mut out = Vec::with_capacity(archive.len());
    for index in 0..archive.len() {
        let mut entry = archive
            .by_index(index)
            .map_err(|e| zip_error(path, format, &format!("opening entry #{index}"), e))?;
        if entry.is_dir() || !keep(entry.name()) {
            continue;
        }
        let name = entry.name().to_owned();
        let bytes = read_entry(&mut entry)
            .map_err(|e| io_in_archive(path, format, &format!("entry '{name}'"), e))?;
        let array = parse_npy(&bytes)
            .map_err(|d| Error::format(path, format, format!("entry '{name}': {d}")))?;
        let key = name.strip_suffix(".npy").unwrap_or(&name).to_owned();
        out.push((key, array));
    }
    Ok(out)
}

/// Writes `entries` as an uncompressed `.npz` archive (what `numpy.savez` writes).
///
/// Each key is stored as `<key>.npy`, in the order given. Atomic like [`write_npy`].
pub fn write_npz(path: &Path, entries: &[(String, ArrayD<f32>)]) -> Result<()> {
    // A duplicate key would make a zip that numpy reads with one array silently lost.
    let mut seen = std::collections::HashSet::with_capacity(entries.len());
    for (key, _) in entries {
        if !seen.insert(key.as_str()) {
            return Err(Error::format(path, NPZ, format!("duplicate key '{key}'")));
        }
    }
    super::write_atomic(path, |w| {
        let mut npz = NpzWriter::new(w);
        for (key, array) in entries {
            npz.add_array(key.as_str(), array)
                .map_err(|e| io::Error::other(format!("writing entry '{key}': {e}")))?;
        }
        npz.finish()
            .map_err(|e| io::Error::other(format!("finishing the zip archive: {e}")))?;
        Ok(())
    })
}

/// Reads one zip entry whole, never holding more than the entry really inflates to.
///
/// The declared size only bounds the read (and the first allocation): a lying size
/// either fails the zip crate's own size/CRC checks or is caught here.
pub(crate) fn read_entry<R: Read>(entry: &mut zip::read::ZipFile<'_, R>) -> io::Result<Vec<u8>> {
    /// Largest first allocation; beyond it the vector grows with the data actually read.
    const FIRST_ALLOCATION: u64 = 16 << 20;
    let declared = entry.size();
    let capacity = usize::try_from(declared.min(FIRST_ALLOCATION)).unwrap_or(0);
    let mut buf = Vec::with_capacity(capacity);
    entry
        .take(declared.saturating_add(1))
        .read_to_end(&mut buf)?;
    if buf.len() as u64 != declared {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "entry holds {} bytes, its header says {declared}",
                buf.len()
            ),
        ));
    }
    Ok(buf)
}

/// Maps a zip error while reading `what` of the archive at `path`.
///
/// Only a genuine operating-system failure is [`Error::Io`]; a short read or bad data
/// means the archive itself is broken.
pub(crate) fn zip_error(
    path: &Path,
    format: &'static str,
    what: &str,
    e: zip::result::ZipError,
) -> Error {
    match e {
        zip::result::ZipError::Io(e) => io_in_archive(path, format, what, e),
        other => Error::format(path, format, format!("{what}: {other}")),
    }
}

/// Maps an I/O error met while reading `what` inside the archive at `path`.
pub(crate) fn io_in_archive(path: &Path, format: &'static str, what: &str, e: io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput => {
            Error::format(path, format, format!("{what}: {e}"))
        }
        _ => Error::io(path, e),
    }
}

/// The element types accepted, by numpy kind and item size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Element {
    F32,
    F64,
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
    Bool,
}

impl Element {
    /// Classifies a numpy type descriptor such as `<f4`, `|u1` or `b`.
    fn from_descriptor(descr: &str) -> Option<Element> {
        // One-character codes numpy still accepts for bytes.
        match descr {
            "b" => return Some(Element::I8),
            "B" => return Some(Element::U8),
            _ => {}
        }
        let body = descr.strip_prefix(['<', '>', '|', '=']).unwrap_or(descr);
        Some(match body {
            "f4" => Element::F32,
            "f8" => Element::F64,
            "i1" => Element::I8,
            "i2" => Element::I16,
            "i4" => Element::I32,
            "i8" => Element::I64,
            "u1" => Element::U8,
            "u2" => Element::U16,
            "u4" => Element::U32,
            "u8" => Element::U64,
            "b1" => Element::Bool,
            _ => return None,
        })
    }

    /// Bytes per element.
    fn size(self) -> u64 {
        match self {
            Element::I8 | Element::U8 | Element::Bool => 1,
            Element::I16 | Element::U16 => 2,
            Element::F32 | Element::I32 | Element::U32 => 4,
            Element::F64 | Element::I64 | Element::U64 => 8,
        }
    }
}

/// What a `.npy` header declares, validated.
#[derive(Clone, Debug)]
pub(crate) struct NpyInfo {
    /// The element type.
    element: Element,
    /// The array's shape.
    pub(crate) shape: Vec<usize>,
    /// Bytes of the data the header promises.
    data_bytes: u64,
    /// Bytes of the array once converted to `f32`.
    pub(crate) f32_bytes: u64,
    /// Whether the data is little-endian `f32` in C order (decoded by a plain copy).
    plain_f32: bool,
}

/// The largest header accepted (numpy writes well under 1 KiB; the format allows 4 GiB).
const MAX_HEADER: u64 = 1 << 20;

/// Parses and validates a `.npy` header from the start of `bytes`; returns what it
/// declares and the header's length. Every dimension is bounded, a zero among them
/// included: the array must be representable (see [`size::representable`]), so no
/// crate's shape arithmetic can overflow on it.
pub(crate) fn parse_header(bytes: &[u8]) -> std::result::Result<(NpyInfo, usize), String> {
    check_header_length(bytes)?;
    check_nesting(bytes)?;
    // numpy's own form is read directly; anything else goes to ndarray-npy's parser.
    let (descr, shape, fortran, header_len) = match header::numpy_header(bytes) {
        Some(h) => (h.descr, h.shape, h.fortran, h.len),
        None => {
            let mut reader = bytes;
            let header = Header::from_reader(&mut reader).map_err(|e| match e {
                ReadHeaderError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    "truncated header".to_owned()
                }
                other => format!("bad header: {other}"),
            })?;
            let descr = descriptor_string(&header.type_descriptor.to_string())
                .ok_or_else(|| format!("unsupported element type {}", header.type_descriptor))?;
            let fortran = matches!(header.layout, ndarray_npy::npy::header::Layout::Fortran);
            (descr, header.shape, fortran, bytes.len() - reader.len())
        }
    };
    let element = Element::from_descriptor(&descr)
        .ok_or_else(|| format!("unsupported element type '{descr}'"))?;
    let too_large = || format!("shape {shape:?} is too large");
    size::representable(&shape, element.size()).map_err(|_| too_large())?;
    let n = size::elems(&shape).map_err(|_| too_large())?;
    let data_bytes = size::bytes_of_elems(n, element.size()).map_err(|_| too_large())?;
    let f32_bytes = size::bytes_of_elems(n, 4).map_err(|_| too_large())?;
    // Little-endian f32 in C order is the bytes themselves: decoded without a parser.
    let plain_f32 =
        !fortran && (descr == "<f4" || (descr == "=f4" && cfg!(target_endian = "little")));
    let info = NpyInfo {
        element,
        shape,
        data_bytes,
        f32_bytes,
        plain_f32,
    };
    Ok((info, header_len))
}

/// The deepest bracket nesting a header may have: numpy's own headers nest two deep
/// (the dictionary and the shape tuple); a structured dtype with a subarray nests four
/// (dictionary, field list, field tuple, subarray shape), and is then refused for its
/// element type, which lcjit does not read.
///
/// Why so low: ndarray-npy's Python-literal parser (pest) backtracks on brackets that do
/// not close, at a cost that grows about 1.8× per level (fuzzing found a 135-byte header
/// nested 13 deep that took 7 s; 32 levels would take hours). Four levels bound it to a
/// constant factor over the header's length.
const MAX_NESTING: usize = 4;

/// Rejects a header nested deeper than [`MAX_NESTING`] before ndarray-npy's recursive
/// Python-literal parser sees it (a shape of 20,000 nested tuples overflows its stack,
/// a dozen unclosed brackets make it backtrack for seconds). Only the header's own bytes
/// are scanned (at most its declared length).
fn check_nesting(bytes: &[u8]) -> std::result::Result<(), String> {
    let (start, len): (usize, Option<usize>) = match bytes.get(6) {
        Some(1) => (
            10,
            bytes
                .get(8..10)
                .map(|b| usize::from(u16::from_le_bytes([b[0], b[1]]))),
        ),
        Some(2 | 3) => (
            12,
            bytes
                .get(8..12)
                .and_then(|b| usize::try_from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])).ok()),
        ),
        _ => return Ok(()),
    };
    let end = len.map_or(bytes.len(), |l| start.saturating_add(l).min(bytes.len()));
    let mut depth = 0usize;
    for &b in bytes.get(start..end).unwrap_or(&[]) {
        match b {
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(format!(
                        "bad header: brackets nested deeper than {MAX_NESTING}"
                    ));
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Reads just the header of a `.npy` stream (into `prefix`, which then holds exactly
/// the header's bytes) and validates it: a few hundred bytes, whatever the array's size.
pub(crate) fn read_header_prefix<R: Read>(
    reader: &mut R,
    prefix: &mut Vec<u8>,
) -> std::result::Result<NpyInfo, String> {
    let truncated = |e: io::Error| match e.kind() {
        io::ErrorKind::UnexpectedEof => "truncated header".to_owned(),
        _ => format!("reading the header: {e}"),
    };
    let mut fixed = [0u8; 10];
    reader.read_exact(&mut fixed).map_err(truncated)?;
    prefix.extend_from_slice(&fixed);
    let header_len = match fixed[6] {
        1 => u64::from(u16::from_le_bytes([fixed[8], fixed[9]])),
        2 | 3 => {
            let mut rest = [0u8; 2];
            reader.read_exact(&mut rest).map_err(truncated)?;
            prefix.extend_from_slice(&rest);
            u64::from(u32::from_le_bytes([fixed[8], fixed[9], rest[0], rest[1]]))
        }
        // Not a version numpy writes: let the parser name what is wrong.
        _ => 0,
    };
    if header_len > MAX_HEADER {
        return Err(format!(
            "a header of {header_len} bytes is too large (at most {MAX_HEADER})"
        ));
    }
    reader
        .take(header_len)
        .read_to_end(prefix)
        .map_err(truncated)?;
    parse_header(prefix).map(|(info, _)| info)
}

/// Checks that the `found` bytes after a header are exactly the `expected` data bytes.
fn check_data_len(found: u64, expected: u64) -> std::result::Result<(), String> {
    if found < expected {
        return Err(format!(
            "truncated data (expected {expected} bytes, found {found})"
        ));
    }
    if found > expected {
        return Err(format!(
            "{} extra bytes after the data (expected {expected} bytes, found {found})",
            found - expected
        ));
    }
    Ok(())
}

/// Parses a whole `.npy` image; the error is the detail for an [`Error::Format`].
pub(crate) fn parse_npy(bytes: &[u8]) -> std::result::Result<ArrayD<f32>, String> {
    let (info, header_len) = parse_header(bytes)?;
    let data_len = (bytes.len() - header_len) as u64;
    check_data_len(data_len, info.data_bytes)?;
    if info.plain_f32 {
        let data = bytes
            .get(header_len..)
            .unwrap_or(&[])
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        return ArrayD::from_shape_vec(ndarray::IxDyn(&info.shape), data)
            .map_err(|e| format!("data does not match shape {:?}: {e}", info.shape));
    }
    let element = info.element;
    // The sizes agree, so ndarray-npy's allocation is bounded by the bytes in hand.
    let array = match element {
        Element::F32 => decode_f32(bytes)?,
        Element::F64 => decode::<f64>(bytes, |v| v as f32)?,
        Element::I8 => decode::<i8>(bytes, f32::from)?,
        Element::I16 => decode::<i16>(bytes, f32::from)?,
        Element::I32 => decode::<i32>(bytes, |v| v as f32)?,
        Element::I64 => decode::<i64>(bytes, |v| v as f32)?,
        Element::U8 => decode::<u8>(bytes, f32::from)?,
        Element::U16 => decode::<u16>(bytes, f32::from)?,
        Element::U32 => decode::<u32>(bytes, |v| v as f32)?,
        Element::U64 => decode::<u64>(bytes, |v| v as f32)?,
        Element::Bool => decode::<bool>(bytes, |v| if v { 1.0 } else { 0.0 })?,
    };
    Ok(array)
}

/// Decodes an `f32` image with ndarray-npy: no conversion, so no second copy unless the
/// file is in Fortran order.
fn decode_f32(bytes: &[u8]) -> std::result::Result<ArrayD<f32>, String> {
    let raw = ArrayD::<f32>::read_npy(bytes).map_err(|e| match e {
        ReadNpyError::MissingData => "truncated data".to_owned(),
        other => other.to_string(),
    })?;
    Ok(if raw.is_standard_layout() {
        raw
    } else {
        raw.as_standard_layout().into_owned()
    })
}

/// Decodes the image as `T` with ndarray-npy and converts to `f32` in standard layout.
fn decode<T>(bytes: &[u8], convert: fn(T) -> f32) -> std::result::Result<ArrayD<f32>, String>
where
    T: ndarray_npy::ReadableElement + Clone,
{
    let raw = ArrayD::<T>::read_npy(bytes).map_err(|e| match e {
        ReadNpyError::MissingData => "truncated data".to_owned(),
        other => other.to_string(),
    })?;
    let converted = raw.mapv(convert);
    // `mapv` keeps a Fortran-order input's strides; callers index assuming C order.
    Ok(if converted.is_standard_layout() {
        converted
    } else {
        converted.as_standard_layout().into_owned()
    })
}

/// Rejects a version 2/3 header whose 4-byte length field claims more bytes than the
/// image holds, before ndarray-npy allocates a buffer of that length.
fn check_header_length(bytes: &[u8]) -> std::result::Result<(), String> {
    // Layout fixed by the npy spec: 6-byte magic, major, minor, then HEADER_LEN
    // (u16 in version 1, u32 from version 2). Version 1's u16 needs no check.
    let major = bytes.get(6).copied();
    if matches!(major, Some(2) | Some(3)) {
        if let Some(field) = bytes.get(8..12) {
            let mut le = [0u8; 4];
            le.copy_from_slice(field);
            let header_len = u64::from(u32::from_le_bytes(le));
            let available = (bytes.len() as u64).saturating_sub(12);
            if header_len > available {
                return Err(format!(
                    "truncated header (expected {header_len} bytes, found {available})"
                ));
            }
        }
    }
    Ok(())
}

/// The descriptor of a simple dtype, from the Python literal of the header's `descr`.
///
/// ndarray-npy exposes the descriptor as a `py_literal::Value`, a crate lcjit does not
/// depend on directly, so its Python rendering is read instead: a simple dtype renders as
/// a quoted string (`'<f4'`); a structured dtype renders as a list and yields `None`.
fn descriptor_string(literal: &str) -> Option<String> {
    let inner = literal
        .strip_prefix('\'')
        .and_then(|s| s.strip_suffix('\''))
        .or_else(|| literal.strip_prefix('"').and_then(|s| s.strip_suffix('"')))?;
    // Descriptors are short ASCII codes; anything else is not one we accept.
    (inner.len() <= 8
        && inner
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "<>|=".contains(c)))
    .then(|| inner.to_owned())
}

#[cfg(test)]
#[path = "npy_tests.rs"]
mod tests;
