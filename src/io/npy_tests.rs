//! Tests of `.npy`/`.npz` reading and writing (a sibling file, as `h5_tests.rs`).
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
    assert!(detail.contains("header"), "{detail}");
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

#[test]
fn only_regular_files_are_read() {
    let dir = test_dir("npy-special");
    let zero = dir.join("zero.npy");
    std::os::unix::fs::symlink("/dev/zero", &zero).expect("symlink");
    let t = std::time::Instant::now();
    let e = read_npy(&zero).expect_err("a device");
    assert!(
        e.to_string()
            .contains("not a regular file (a character device)"),
        "{e}"
    );
    let e = read_npz(&zero).expect_err("a device");
    assert!(matches!(e, Error::Io { .. }), "{e}");
    let e = super::stream::NpyInput::open(&zero)
        .err()
        .expect("a device");
    assert!(e.to_string().contains("not a regular file"), "{e}");
    assert!(t.elapsed().as_secs() < 2, "refused at once");
    let e = read_npy(&dir).expect_err("a directory");
    assert!(e.to_string().contains("a directory"), "{e}");
}

#[test]
fn the_budget_bounds_what_is_read() {
    let dir = test_dir("npy-budget");
    let p = dir.join("a.npy");
    write_npy(&p, &ArrayD::from_elem(IxDyn(&[1000, 4]), 1.0f32)).expect("write");
    // 16,128 bytes of file, the decoded array and its f32 form: 48,128 bytes.
    let e = read_npy_within(&p, 40_000).expect_err("over");
    assert!(
        matches!(
            e,
            Error::FileBudget {
                bytes: 48_128,
                budget: 40_000,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(
        read_npy_within(&p, 48_128).expect("fits").shape(),
        [1000, 4]
    );
    // The file alone over the budget is refused from its size.
    let e = read_npy_within(&p, 1000).expect_err("file over");
    assert!(
        e.to_string().contains("reading the file needs 16128 bytes"),
        "{e}"
    );
}

#[test]
fn a_zero_dimension_does_not_hide_huge_ones() {
    let dir = test_dir("npy-zero-dim");
    for shape in [
        "(0, 1099511627776, 1099511627776)",
        "(4611686018427387904, 0)",
    ] {
        let p = write(&dir, "z.npy", &npy_image("<f4", false, shape, &[]));
        let detail = format_detail(&read_npy(&p).expect_err(shape));
        assert!(detail.contains("too large"), "{shape}: {detail}");
        let e = super::stream::NpyInput::open(&p).err().expect(shape);
        assert!(e.to_string().contains("too large"), "{shape}: {e}");
    }
    let p = write(
        &dir,
        "ok.npy",
        &npy_image("<f4", false, "(0, 1000000, 3)", &[]),
    );
    assert_eq!(read_npy(&p).expect("empty").shape(), [0, 1_000_000, 3]);
}

#[test]
fn npz_entries_are_judged_by_their_headers_before_inflating() {
    let dir = test_dir("npz-bomb");
    // An entry whose header promises 4 GiB: refused after inflating its header only
    // (the stream holds just 64 KiB of the promised data).
    let p = dir.join("bomb.npz");
    let mut zw = zip::ZipWriter::new(fs::File::create(&p).expect("create"));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    zw.start_file("a/kernel.npy", opts).expect("start");
    zw.write_all(&npy_image("<f4", false, "(2,)", &[0u8; 8]))
        .expect("a");
    zw.start_file("junk/big.npy", opts).expect("start");
    let mut img = npy_image("<f4", false, "(1073741824,)", &[]);
    img.extend(std::iter::repeat_n(0u8, 1 << 16));
    zw.write_all(&img).expect("junk");
    zw.finish().expect("finish");
    let e = read_npz_within(&p, 1 << 30).expect_err("bomb");
    // The declared size (header + 64 KiB) disagrees with the header's 4 GiB: broken.
    assert!(e.to_string().contains("junk/big.npy"), "{e}");
    // Over the budget with honest sizes: a FileBudget naming the entry.
    let p = dir.join("honest.npz");
    let entries = vec![("x".to_owned(), ArrayD::from_elem(IxDyn(&[1000]), 1.0f32))];
    write_npz(&p, &entries).expect("write");
    let e = read_npz_within(&p, 5000).expect_err("over");
    assert!(matches!(e, Error::FileBudget { .. }), "{e}");
    assert!(e.to_string().contains("entry 'x.npy'"), "{e}");
    assert_eq!(read_npz_within(&p, 1 << 20).expect("fits"), entries);
}

#[test]
fn many_entries_load_in_linear_time() {
    let dir = test_dir("npz-many");
    let p = dir.join("many.npz");
    let entries: Vec<(String, ArrayD<f32>)> = (0..20_000)
        .map(|i| (format!("l{i}/w"), ArrayD::from_elem(IxDyn(&[1]), i as f32)))
        .collect();
    write_npz(&p, &entries).expect("write");
    let t = std::time::Instant::now();
    let w = crate::io::read_weights_npz(&p).expect("read");
    assert_eq!(w.layers.len(), 20_000);
    assert_eq!(w.layers[19_999].weights[0].1[[0]], 19_999.0);
    assert!(t.elapsed().as_secs() < 5, "{:?}", t.elapsed());
}
