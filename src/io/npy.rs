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
    let need = size::add64(len, info.f32_bytes).unwrap_or(u64::MAX);
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
    let mut arrays = 0u64;
    let mut largest_raw = 0u64;
    for index in 0..archive.len() {
        let mut entry = archive
            .by_index(index)
            .map_err(|e| zip_error(path, NPZ, &format!("opening entry #{index}"), e))?;
        if entry.is_dir() {
            continue;
        }
        let name = entry.name().to_owned();
        let declared = entry.size();
        let info = read_header_prefix(&mut entry, &mut Vec::new())
            .map_err(|d| Error::format(path, NPZ, format!("entry '{name}': {d}")))?;
        arrays = size::add64(arrays, info.f32_bytes).unwrap_or(u64::MAX);
        largest_raw = largest_raw.max(declared);
        let need = arrays.saturating_add(largest_raw);
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
            .map_err(|e| zip_error(path, NPZ, &format!("opening entry #{index}"), e))?;
        if entry.is_dir() {
            continue;
        }
        let name = entry.name().to_owned();
        let bytes = read_entry(&mut entry)
            .map_err(|e| io_in_archive(path, NPZ, &format!("entry '{name}'"), e))?;
        let array = parse_npy(&bytes)
            .map_err(|d| Error::format(path, NPZ, format!("entry '{name}': {d}")))?;
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
}

/// The largest header accepted (numpy writes well under 1 KiB; the format allows 4 GiB).
const MAX_HEADER: u64 = 1 << 20;

/// Parses and validates a `.npy` header from the start of `bytes`; returns what it
/// declares and the header's length. Every dimension is bounded, a zero among them
/// included: the array must be representable (see [`size::representable`]), so no
/// crate's shape arithmetic can overflow on it.
pub(crate) fn parse_header(bytes: &[u8]) -> std::result::Result<(NpyInfo, usize), String> {
    check_header_length(bytes)?;
    let mut reader = bytes;
    let header = Header::from_reader(&mut reader).map_err(|e| match e {
        ReadHeaderError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            "truncated header".to_owned()
        }
        other => format!("bad header: {other}"),
    })?;
    let header_len = bytes.len() - reader.len();
    let descr = descriptor_string(&header.type_descriptor.to_string())
        .ok_or_else(|| format!("unsupported element type {}", header.type_descriptor))?;
    let element = Element::from_descriptor(&descr)
        .ok_or_else(|| format!("unsupported element type '{descr}'"))?;
    let too_large = || format!("shape {:?} is too large", header.shape);
    size::representable(&header.shape, element.size()).map_err(|_| too_large())?;
    let n = size::elems(&header.shape).map_err(|_| too_large())?;
    let data_bytes = size::bytes_of_elems(n, element.size()).map_err(|_| too_large())?;
    let f32_bytes = size::bytes_of_elems(n, 4).map_err(|_| too_large())?;
    let info = NpyInfo {
        element,
        shape: header.shape,
        data_bytes,
        f32_bytes,
    };
    Ok((info, header_len))
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

/// Parses a whole `.npy` image; the error is the detail for an [`Error::Format`].
pub(crate) fn parse_npy(bytes: &[u8]) -> std::result::Result<ArrayD<f32>, String> {
    let (info, header_len) = parse_header(bytes)?;
    let data_len = (bytes.len() - header_len) as u64;
    let (element, expected) = (info.element, info.data_bytes);
    if data_len < expected {
        return Err(format!(
            "truncated data (expected {expected} bytes, found {data_len})"
        ));
    }
    if data_len > expected {
        return Err(format!(
            "{} extra bytes after the data (expected {expected} bytes, found {data_len})",
            data_len - expected
        ));
    }
    // The sizes agree, so ndarray-npy's allocation is bounded by the bytes in hand.
    let array = match element {
        Element::F32 => decode::<f32>(bytes, |v| v)?,
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
mod tests {
    use super::*;
    use crate::io::test_dir;
    use ndarray::{IxDyn, ShapeBuilder};
    use std::fs;
    use std::io::Write;

    /// A version-1 `.npy` image with the given header fields and raw data.
    fn npy_image(descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
        let py_bool = if fortran { "True" } else { "False" };
        let mut dict =
            format!("{{'descr': '{descr}', 'fortran_order': {py_bool}, 'shape': {shape}, }}");
        while (10 + dict.len() + 1) % 64 != 0 {
            dict.push(' ');
        }
        dict.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
        out.extend_from_slice(dict.as_bytes());
        out.extend_from_slice(data);
        out
    }

    fn format_detail(e: &Error) -> String {
        match e {
            Error::Format { detail, .. } => detail.clone(),
            other => panic!("expected a Format error, got {other:?}"),
        }
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = dir.join(name);
        fs::write(&p, bytes).expect("writing a test file");
        p
    }

    #[test]
    fn npy_round_trip_keeps_shape_and_bits() {
        let dir = test_dir("npy-round-trip");
        let p = dir.join("a.npy");
        let a = ArrayD::from_shape_vec(
            IxDyn(&[2, 3, 4]),
            (0..24).map(|i| (i as f32 - 7.5) / 3.0).collect(),
        )
        .expect("shape");
        write_npy(&p, &a).expect("write");
        let b = read_npy(&p).expect("read");
        assert_eq!(a.shape(), b.shape());
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
        // A 0-d array and an empty array survive too.
        let s = ArrayD::from_elem(IxDyn(&[]), 2.5f32);
        write_npy(&p, &s).expect("write scalar");
        assert_eq!(read_npy(&p).expect("read scalar"), s);
        let e = ArrayD::<f32>::zeros(IxDyn(&[0, 3]));
        write_npy(&p, &e).expect("write empty");
        assert_eq!(read_npy(&p).expect("read empty"), e);
    }

    #[test]
    fn npy_other_element_types_convert_to_f32() {
        let dir = test_dir("npy-types");
        let p = dir.join("t.npy");
        let check = |expected: &[f32]| {
            let a = read_npy(&p).expect("read");
            assert_eq!(a.iter().copied().collect::<Vec<_>>(), expected);
        };
        ndarray_npy::write_npy(&p, &ndarray::arr1(&[1.5f64, -2.0])).expect("f64");
        check(&[1.5, -2.0]);
        ndarray_npy::write_npy(&p, &ndarray::arr1(&[-3i8, 4])).expect("i8");
        check(&[-3.0, 4.0]);
        ndarray_npy::write_npy(&p, &ndarray::arr1(&[-3i16, 4])).expect("i16");
        check(&[-3.0, 4.0]);
        ndarray_npy::write_npy(&p, &ndarray::arr1(&[-3i32, 4])).expect("i32");
        check(&[-3.0, 4.0]);
        ndarray_npy::write_npy(&p, &ndarray::arr1(&[-3i64, 4])).expect("i64");
        check(&[-3.0, 4.0]);
        ndarray_npy::write_npy(&p, &ndarray::arr1(&[3u8, 250])).expect("u8");
        check(&[3.0, 250.0]);
        ndarray_npy::write_npy(&p, &ndarray::arr1(&[3u16, 4])).expect("u16");
        check(&[3.0, 4.0]);
        ndarray_npy::write_npy(&p, &ndarray::arr1(&[3u32, 4])).expect("u32");
        check(&[3.0, 4.0]);
        ndarray_npy::write_npy(&p, &ndarray::arr1(&[3u64, 4])).expect("u64");
        check(&[3.0, 4.0]);
        ndarray_npy::write_npy(&p, &ndarray::arr1(&[true, false])).expect("bool");
        check(&[1.0, 0.0]);
        // Big-endian float32.
        let mut data = Vec::new();
        data.extend_from_slice(&1.25f32.to_be_bytes());
        data.extend_from_slice(&(-8.0f32).to_be_bytes());
        fs::write(&p, npy_image(">f4", false, "(2,)", &data)).expect("be");
        check(&[1.25, -8.0]);
    }

    #[test]
    fn npy_fortran_order_comes_back_in_c_order() {
        let dir = test_dir("npy-fortran");
        let p = dir.join("f.npy");
        let f = ndarray::Array2::from_shape_vec((2, 3).f(), vec![1.0f32, 4.0, 2.0, 5.0, 3.0, 6.0])
            .expect("shape");
        ndarray_npy::write_npy(&p, &f).expect("write fortran");
        let a = read_npy(&p).expect("read");
        assert!(a.is_standard_layout());
        assert_eq!(
            a,
            ndarray::arr2(&[[1.0f32, 2.0, 3.0], [4.0, 5.0, 6.0]]).into_dyn()
        );
    }

    #[test]
    fn npy_truncated_data_names_the_sizes() {
        let dir = test_dir("npy-truncated");
        let full = npy_image("<f4", false, "(2, 3, 4)", &[0u8; 96]);
        let cut = full.len() - 56;
        let p = write(&dir, "x.npy", &full[..cut]);
        let e = read_npy(&p).expect_err("truncated");
        assert_eq!(
            e.to_string(),
            format!(
                "{}: not a valid npy file: truncated data (expected 96 bytes, found 40)",
                p.display()
            )
        );
        // Every shorter prefix fails cleanly too.
        for len in 0..cut {
            let p = write(&dir, "y.npy", &full[..len]);
            format_detail(&read_npy(&p).expect_err("prefix"));
        }
    }

    #[test]
    fn npy_corrupt_inputs_are_format_errors() {
        let dir = test_dir("npy-corrupt");
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("empty", Vec::new(), "header"),
            (
                "text",
                b"hello, world, this is not numpy".to_vec(),
                "header",
            ),
            (
                "extra",
                npy_image("<f4", false, "(2,)", &[0u8; 12]),
                "extra bytes",
            ),
            (
                "huge",
                npy_image("<f4", false, "(1099511627776, 1099511627776)", &[0u8; 8]),
                "too large",
            ),
            (
                "big",
                npy_image("<f8", false, "(1000000000,)", &[0u8; 8]),
                "truncated data",
            ),
            (
                "half",
                npy_image("<f2", false, "(2,)", &[0u8; 4]),
                "unsupported element type",
            ),
            (
                "complex",
                npy_image("<c8", false, "(1,)", &[0u8; 8]),
                "unsupported element type",
            ),
            (
                "string",
                npy_image("<U3", false, "(1,)", &[0u8; 12]),
                "unsupported element type",
            ),
            ("badbool", npy_image("|b1", false, "(2,)", &[0, 7]), ""),
            (
                "negdim",
                npy_image("<f4", false, "(-1,)", &[0u8; 4]),
                "header",
            ),
        ];
        for (name, bytes, needle) in cases {
            let p = write(&dir, &format!("{name}.npy"), &bytes);
            let detail = format_detail(&read_npy(&p).expect_err(name));
            assert!(detail.contains(needle), "{name}: {detail}");
        }
        // A structured dtype (descr is a list, not a string).
        let mut s = npy_image("<f4", false, "(1,)", &[0u8; 8]);
        let text = String::from_utf8_lossy(&s).replace("'<f4'", "[('a','<f4'),('b','<f4')]");
        s = text.into_bytes();
        let p = write(&dir, "struct.npy", &s);
        format_detail(&read_npy(&p).expect_err("structured"));
        // Version 2 header claiming a 4 GiB header: refused before any allocation.
        let mut v2 = b"\x93NUMPY\x02\x00".to_vec();
        v2.extend_from_slice(&u32::MAX.to_le_bytes());
        v2.extend_from_slice(b"{'descr'");
        let p = write(&dir, "v2.npy", &v2);
        let detail = format_detail(&read_npy(&p).expect_err("v2"));
        assert!(detail.contains("truncated header"), "{detail}");
    }

    #[test]
    fn npy_missing_file_is_an_io_error() {
        let dir = test_dir("npy-missing");
        let e = read_npy(&dir.join("nope.npy")).expect_err("missing");
        assert!(matches!(e, Error::Io { .. }), "{e}");
        let e = read_npz(&dir.join("nope.npz")).expect_err("missing");
        assert!(matches!(e, Error::Io { .. }), "{e}");
    }

    #[test]
    fn npz_round_trip_keeps_keys_and_order() {
        let dir = test_dir("npz-round-trip");
        let p = dir.join("w.npz");
        let entries: Vec<(String, ArrayD<f32>)> = ["zeta/kernel", "alpha/bias", "m"]
            .iter()
            .enumerate()
            .map(|(i, k)| {
                (
                    k.to_string(),
                    ArrayD::from_elem(IxDyn(&[i + 1, 2]), i as f32),
                )
            })
            .collect();
        write_npz(&p, &entries).expect("write");
        assert_eq!(read_npz(&p).expect("read"), entries);
        let e = write_npz(&p, &[entries[0].clone(), entries[0].clone()]).expect_err("dup");
        assert!(matches!(e, Error::Format { .. }), "{e}");
    }

    #[test]
    fn npz_corrupt_inputs_are_format_errors() {
        let dir = test_dir("npz-corrupt");
        let good = dir.join("good.npz");
        let entries = vec![
            ("a".to_owned(), ArrayD::from_elem(IxDyn(&[64]), 1.0f32)),
            ("b".to_owned(), ArrayD::from_elem(IxDyn(&[8, 8]), 2.0f32)),
        ];
        write_npz(&good, &entries).expect("write");
        let bytes = fs::read(&good).expect("read back");
        // Every truncation, and a byte flipped at each of many positions.
        for len in (0..bytes.len()).step_by(7) {
            let p = write(&dir, "cut.npz", &bytes[..len]);
            format_detail(&read_npz(&p).expect_err("truncated npz"));
        }
        for pos in (0..bytes.len()).step_by(5) {
            let mut b = bytes.clone();
            b[pos] ^= 0x5a;
            let p = write(&dir, "flip.npz", &b);
            if let Err(e) = read_npz(&p) {
                format_detail(&e);
            }
        }
        let p = write(&dir, "text.npz", b"not a zip at all");
        format_detail(&read_npz(&p).expect_err("not a zip"));

        // A well-formed zip whose entry is a truncated npy: the error names the entry.
        let p = dir.join("short-entry.npz");
        let mut zw = zip::ZipWriter::new(fs::File::create(&p).expect("create"));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        zw.start_file("w.npy", opts).expect("start");
        let img = npy_image("<f4", false, "(1000000,)", &[0u8; 16]);
        zw.write_all(&img).expect("entry");
        zw.finish().expect("finish");
        let detail = format_detail(&read_npz(&p).expect_err("short entry"));
        assert!(
            detail.contains("entry 'w.npy'") && detail.contains("truncated data"),
            "{detail}"
        );
    }
}
