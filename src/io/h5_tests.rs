//! Unit tests of `h5.rs`: write/read round trips, Keras's layout and attribute quirks,
//! and truncated or corrupted files (which must fail with a Format error, never panic).

use super::*;
use crate::io::test_dir;
use ndarray::ShapeBuilder;
use std::fs;

fn golden(case: &str, file: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/keras-golden")
        .join(case)
        .join(file)
}

fn assert_format(r: Result<H5Model>, what: &str) -> String {
    match r {
        Err(Error::Format { detail, .. }) => detail,
        other => panic!("{what}: expected a Format error, got {other:?}"),
    }
}

fn sample_weights() -> KerasWeights {
    let kernel = ArrayD::from_shape_vec(IxDyn(&[3, 2]), vec![1.0f32, -2.0, 3.5, 0.0, -0.0, 6.0])
        .expect("shape");
    // A Fortran-layout array must be written in logical order.
    let fortran = ndarray::Array2::from_shape_vec((2, 2).f(), vec![1.0f32, 3.0, 2.0, 4.0])
        .expect("shape")
        .into_dyn();
    KerasWeights {
        layers: vec![
            LayerWeights {
                layer: "input_1".to_owned(),
                weights: Vec::new(),
            },
            LayerWeights {
                layer: "lc".to_owned(),
                weights: vec![
                    ("kernel".to_owned(), kernel),
                    ("bias".to_owned(), ArrayD::from_elem(IxDyn(&[2]), 0.5)),
                ],
            },
            LayerWeights {
                layer: "batch_normalization".to_owned(),
                weights: vec![
                    ("gamma".to_owned(), fortran),
                    (
                        "moving_variance".to_owned(),
                        ArrayD::from_elem(IxDyn(&[2]), 1.0),
                    ),
                ],
            },
        ],
    }
}

#[test]
fn write_then_read_full_model_and_weights_only() {
    let dir = test_dir("h5-round-trip");
    let w = sample_weights();
    let p = dir.join("m.h5");
    write_h5_weights(
        &p,
        Some("{\"class_name\": \"Sequential\"}"),
        Some("{\"loss\": \"mse\"}"),
        &w,
    )
    .expect("write");
    let m = read_h5(&p).expect("read");
    assert_eq!(
        m.model_config.as_deref(),
        Some("{\"class_name\": \"Sequential\"}")
    );
    assert_eq!(m.training_config.as_deref(), Some("{\"loss\": \"mse\"}"));
    assert_eq!(m.weights, w);
    let gamma = &m.weights.layers[2].weights[0].1;
    assert_eq!(
        gamma.iter().copied().collect::<Vec<_>>(),
        [1.0, 2.0, 3.0, 4.0]
    );

    // The layout is Keras's: names with scope and ":0", datasets under <layer>/<layer>.
    let f = hdf5_pure::File::open(&p).expect("open");
    let attrs = f
        .group("model_weights/lc")
        .expect("lc")
        .attrs()
        .expect("attrs");
    assert_eq!(
        attrs.get("weight_names").and_then(AttrValue::as_strings),
        Some(&["lc/kernel:0".to_owned(), "lc/bias:0".to_owned()][..])
    );
    assert_eq!(
        f.dataset("model_weights/lc/lc/kernel:0")
            .expect("ds")
            .shape()
            .expect("shape"),
        [3, 2]
    );
    let empty = f
        .group("model_weights/input_1")
        .expect("input")
        .attrs()
        .expect("attrs");
    assert_eq!(
        empty.get("weight_names"),
        Some(&AttrValue::F64Array(Vec::new()))
    );
    let root = f.root().attrs().expect("root");
    assert_eq!(
        root.get("keras_version").and_then(AttrValue::as_str),
        Some(KERAS_VERSION)
    );
    assert_eq!(
        root.get("backend").and_then(AttrValue::as_str),
        Some(BACKEND)
    );

    let p = dir.join("w.h5");
    write_h5_weights(&p, None, None, &w).expect("write");
    let m = read_h5(&p).expect("read");
    assert_eq!((m.model_config, m.training_config), (None, None));
    assert_eq!(m.weights, w);
    assert!(hdf5_pure::File::open(&p)
        .expect("open")
        .group("model_weights")
        .is_err());
}

#[test]
fn write_refuses_names_hdf5_cannot_hold() {
    let dir = test_dir("h5-bad-names");
    let p = dir.join("m.h5");
    for (layer, weight) in [
        ("a/b", "kernel"),
        ("", "kernel"),
        ("lc", "k/x"),
        ("lc", "."),
    ] {
        let w = KerasWeights {
            layers: vec![LayerWeights {
                layer: layer.to_owned(),
                weights: vec![(weight.to_owned(), ArrayD::zeros(IxDyn(&[1])))],
            }],
        };
        let e = write_h5_weights(&p, None, None, &w).expect_err("bad name");
        assert!(matches!(e, Error::Weights { .. }), "{e}");
    }
    assert!(!p.exists());
}

#[test]
fn chunked_and_oddly_typed_attributes() {
    let dir = test_dir("h5-attrs");
    // `layer_names` split into chunks, as Keras does for long lists.
    let mut fb = FileBuilder::new();
    fb.set_attr(
        "layer_names0",
        AttrValue::VarLenStringArray(vec!["a".into()]),
    );
    fb.set_attr(
        "layer_names1",
        AttrValue::AsciiStringArray(vec!["b".into()]),
    );
    for name in ["a", "b"] {
        let mut g = fb.create_group(name);
        g.set_attr(
            "weight_names",
            AttrValue::AsciiStringArray(vec![format!("{name}/w:0")]),
        );
        let mut s = g.create_group(name);
        s.create_dataset("w:0").with_f64_data(&[1.5, 2.5]);
        g.add_group(s.finish());
        fb.add_group(g.finish());
    }
    let p = dir.join("chunks.h5");
    fs::write(&p, fb.finish().expect("build")).expect("write");
    let m = read_h5(&p).expect("read");
    assert_eq!(m.weights.layers.len(), 2);
    assert_eq!(m.weights.layers[1].weights[0].0, "w");
    assert_eq!(
        m.weights.layers[1].weights[0].1.as_slice(),
        Some(&[1.5f32, 2.5][..])
    );

    // Wrong attribute types and dangling names are Format errors naming the object.
    let mut fb = FileBuilder::new();
    fb.set_attr("layer_names", AttrValue::I64(3));
    let p = dir.join("bad-type.h5");
    fs::write(&p, fb.finish().expect("build")).expect("write");
    let d = assert_format(read_h5(&p), "numeric layer_names");
    assert!(d.contains("layer_names"), "{d}");

    let mut fb = FileBuilder::new();
    fb.set_attr(
        "layer_names",
        AttrValue::VarLenStringArray(vec!["ghost".into()]),
    );
    let p = dir.join("dangling.h5");
    fs::write(&p, fb.finish().expect("build")).expect("write");
    let d = assert_format(read_h5(&p), "missing layer group");
    assert!(d.contains("ghost"), "{d}");

    let mut fb = FileBuilder::new();
    fb.set_attr(
        "layer_names",
        AttrValue::VarLenStringArray(vec!["l".into()]),
    );
    let mut g = fb.create_group("l");
    g.set_attr(
        "weight_names",
        AttrValue::VarLenStringArray(vec!["l/kernel:0".into()]),
    );
    fb.add_group(g.finish());
    let p = dir.join("no-dataset.h5");
    fs::write(&p, fb.finish().expect("build")).expect("write");
    let d = assert_format(read_h5(&p), "missing dataset");
    assert!(d.contains("l/l/kernel:0"), "{d}");

    let mut fb = FileBuilder::new();
    fb.set_attr("model_config", AttrValue::VarLenString("{}".into()));
    let p = dir.join("no-weights.h5");
    fs::write(&p, fb.finish().expect("build")).expect("write");
    let d = assert_format(read_h5(&p), "no model_weights");
    assert!(d.contains("model_weights"), "{d}");
}

#[test]
fn bare_names_strip_scope_and_suffix_but_stay_unique() {
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        bare_names("bn", &names(&["bn/gamma:0", "bn/moving_mean:0", "plain"])),
        ["gamma", "moving_mean", "plain"]
    );
    assert_eq!(
        bare_names("bi", &names(&["bi/fwd/kernel:0", "bi/bwd/kernel:0"])),
        ["fwd/kernel", "bwd/kernel"]
    );
}

#[test]
fn missing_empty_and_foreign_files() {
    let dir = test_dir("h5-foreign");
    let e = read_h5(&dir.join("missing.h5")).expect_err("missing");
    assert!(matches!(e, Error::Io { .. }), "{e}");
    let p = dir.join("empty.h5");
    fs::write(&p, b"").expect("write");
    assert_format(read_h5(&p), "empty");
    let p = dir.join("text.h5");
    fs::write(&p, b"this is not an HDF5 file, just some text".repeat(20)).expect("write");
    assert_format(read_h5(&p), "text");
}

#[test]
fn truncated_golden_files_are_format_errors() {
    let dir = test_dir("h5-truncated");
    for (case, file) in [
        ("case_0001", "model.h5"),
        ("model_gpnet_like", "compiled.h5"),
    ] {
        let bytes = fs::read(golden(case, file)).expect("golden file");
        let p = dir.join(file);
        // Prefixes at many lengths, the last ones just short of the end.
        let step = (bytes.len() / 97).max(1);
        let lens = (0..bytes.len())
            .step_by(step)
            .chain(bytes.len().saturating_sub(64)..bytes.len());
        for len in lens {
            fs::write(&p, &bytes[..len]).expect("write");
            let d = assert_format(read_h5(&p), &format!("{case}/{file} cut to {len}"));
            // Past the superblock, the size check names the problem exactly.
            if len > 512 {
                let expected = format!(
                    "truncated file (expected {} bytes, found {len})",
                    bytes.len()
                );
                assert_eq!(d, expected);
            }
        }
    }
}

#[test]
fn corrupted_golden_file_never_panics() {
    let dir = test_dir("h5-corrupt");
    let bytes = fs::read(golden("case_0001", "model.h5")).expect("golden file");
    let p = dir.join("flip.h5");
    // A fixed pseudo-random walk over byte positions (no dev-dependency needed).
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..300 {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let pos = (state >> 33) as usize % bytes.len();
        let mut b = bytes.clone();
        b[pos] ^= 1 << ((state >> 29) & 7);
        fs::write(&p, &b).expect("write");
        // Either outcome is fine (the flip may hit padding or data); a panic is not. A
        // flip in a dataspace can declare a huge dataset: refused by its declaration.
        if let Err(e) = read_h5(&p) {
            assert!(
                matches!(e, Error::Format { .. } | Error::FileBudget { .. }),
                "{e}"
            );
        }
    }
}

/// A weights-only file with one layer whose kernel is written by `kernel`.
fn one_layer(userblock: u64, kernel: impl FnOnce(&mut hdf5_pure::GroupBuilder)) -> Vec<u8> {
    let mut fb = FileBuilder::new();
    if userblock > 0 {
        fb.with_userblock(userblock);
    }
    fb.set_attr(
        "layer_names",
        AttrValue::VarLenStringArray(vec!["d".into()]),
    );
    let mut g = fb.create_group("d");
    g.set_attr(
        "weight_names",
        AttrValue::VarLenStringArray(vec!["d/kernel:0".into()]),
    );
    let mut scope = g.create_group("d");
    kernel(&mut scope);
    g.add_group(scope.finish());
    fb.add_group(g.finish());
    fb.finish().expect("build")
}

#[test]
fn a_userblock_file_loads() {
    let dir = test_dir("h5-userblock");
    for ub in [512u64, 4096] {
        let p = dir.join(format!("ub{ub}.h5"));
        let bytes = one_layer(ub, |s| {
            s.create_dataset("kernel:0")
                .with_f32_data(&[1.0, 2.0, 3.0])
                .with_shape(&[3]);
        });
        fs::write(&p, bytes).expect("write");
        let m = read_h5(&p).expect("a userblock is valid");
        let w = &m.weights.layer("d").expect("d").weights[0].1;
        assert_eq!(w.iter().copied().collect::<Vec<_>>(), [1.0, 2.0, 3.0]);
    }
}

#[test]
fn a_dataset_over_the_budget_is_refused_before_reading() {
    let dir = test_dir("h5-dataset-budget");
    let p = dir.join("big.h5");
    let bytes = one_layer(0, |s| {
        s.create_dataset("kernel:0")
            .with_f32_data(&vec![0.0; 10_000])
            .with_shape(&[10_000])
            .with_chunks(&[1000]);
    });
    let file_len = bytes.len() as u64;
    fs::write(&p, bytes).expect("write");
    // The stored 40,000 bytes and their f32 copy: 80,000 beside the file's own bytes.
    let e = read_h5_within(&p, file_len + 79_999).expect_err("one byte short");
    assert!(matches!(e, Error::FileBudget { .. }), "{e}");
    assert!(e.to_string().contains("dataset 'd/d/kernel:0'"), "{e}");
    let m = read_h5_within(&p, file_len + 80_000).expect("fits exactly");
    assert_eq!(m.weights.layers[0].weights[0].1.len(), 10_000);
}
