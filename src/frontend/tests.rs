//! Unit tests of the front end: dialect details and one test per class of bad input.

use serde_json::{json, Value};

use super::*;
use crate::graph::{Activation, Constraint, DataFormat, Distribution, Initializer, Op, Padding};

const BUDGET: u64 = 16 << 30;

fn parse(text: &str) -> Result<ParsedModel> {
    parse_model_json(text, "test.json", BUDGET)
}

fn parse_v(v: &Value) -> Result<ParsedModel> {
    parse_model_value(v, "test.json", BUDGET)
}

/// A tf-keras Sequential model: input of `shape`, then one layer.
fn seq(shape: Value, class: &str, config: Value) -> Value {
    json!({"class_name": "Sequential", "keras_version": "2.21.0", "config": {"name": "s", "layers": [
        {"class_name": "InputLayer", "config": {"name": "in", "batch_input_shape": shape}},
        {"class_name": class, "config": config}
    ]}})
}

fn lc2d(extra: Value) -> Value {
    let mut c = json!({"name": "lc", "filters": 2, "kernel_size": [3, 3], "strides": [1, 1]});
    if let (Some(m), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            m.insert(k.clone(), v.clone());
        }
    }
    seq(json!([null, 8, 8, 3]), "LocallyConnected2D", c)
}

fn op_of(m: &ParsedModel, name: &str) -> Op {
    let id = m.graph.node_by_name(name).expect("node");
    m.graph.nodes[id].op.clone()
}

fn lc_of(m: &ParsedModel) -> crate::graph::LocallyConnected {
    match op_of(m, "lc") {
        Op::LocallyConnected(l) => l,
        other => panic!("not LC: {other:?}"),
    }
}

/// Asserts a `LayerConfig` error about `layer` / `field` whose message contains `needle`.
fn assert_field_err(r: Result<ParsedModel>, layer: &str, field: &str, needle: &str) {
    let e = r.expect_err("expected an error");
    let msg = e.to_string();
    match &e {
        Error::LayerConfig {
            source_name,
            layer: l,
            field: f,
            ..
        } => {
            assert_eq!(source_name, "test.json");
            assert_eq!(l, layer, "{msg}");
            assert_eq!(f, field, "{msg}");
        }
        other => panic!("expected LayerConfig, got {other:?}"),
    }
    assert!(
        msg.contains(layer) && msg.contains(field) && msg.contains(needle),
        "{msg}"
    );
}

fn assert_graph_err(r: Result<ParsedModel>, needles: &[&str]) {
    let e = r.expect_err("expected an error");
    let msg = e.to_string();
    assert!(matches!(e, Error::Graph { .. }), "{e:?}");
    for n in needles {
        assert!(msg.contains(n), "{msg} lacks {n}");
    }
}

fn assert_config_err(r: Result<ParsedModel>, needle: &str) {
    let e = r.expect_err("expected an error");
    let msg = e.to_string();
    assert!(matches!(e, Error::Config { .. }), "{e:?}");
    assert!(msg.contains("test.json") && msg.contains(needle), "{msg}");
}

// ---- envelope ----------------------------------------------------------------------------

#[test]
fn top_level_must_be_a_model() {
    for text in [
        "[]",
        "3",
        "\"x\"",
        r#"{"class_name":"Dense","config":{"units":3}}"#,
        "{}",
    ] {
        assert_config_err(parse(text), "top level is not a Keras model");
    }
}

#[test]
fn empty_and_invalid_json() {
    assert_config_err(parse(""), "not valid JSON");
    assert_config_err(parse("{\"class_name\": "), "not valid JSON");
    assert_config_err(parse("not json"), "not valid JSON");
}

#[test]
fn deeply_nested_json_is_a_config_error() {
    let text = "[".repeat(10_000);
    assert_config_err(parse(&text), "recursion limit");
    let text = format!(
        "{{\"class_name\":\"Sequential\",\"config\":{}",
        "[".repeat(10_000)
    );
    assert_config_err(parse(&text), "not valid JSON");
}

#[test]
fn sequential_list_config_with_input_dim_and_unknown_keys() {
    let v = json!({"class_name": "Sequential", "keras_version": "1.2.2", "optimizer": {"x": 1}, "config": [
        {"class_name": "Dense", "config": {"name": "d", "output_dim": 3, "input_dim": 5, "init": "normal",
          "bias": false, "whatever": [1, 2]}},
        {"class_name": "Dense", "config": {"name": "e", "output_dim": 2}}]});
    let m = parse_v(&v).unwrap();
    assert_eq!(m.dialect, Dialect::Keras1);
    assert_eq!(m.graph.name, "sequential");
    assert_eq!(m.graph.nodes[m.graph.inputs[0]].shape, vec![5]);
    assert_eq!(m.graph.nodes[m.graph.outputs[0]].shape, vec![2]);
    match op_of(&m, "d") {
        Op::Dense(d) => {
            assert!(!d.use_bias);
            assert_eq!(
                d.kernel_initializer,
                Initializer::RandomNormal {
                    mean: 0.0,
                    stddev: 0.05
                }
            );
        }
        o => panic!("{o:?}"),
    }
}

#[test]
fn keras1_lc1d_input_length_and_dim() {
    let v = json!({"class_name": "Sequential", "keras_version": "1.2.2", "config": [
        {"class_name": "LocallyConnected1D", "config": {"name": "lc", "nb_filter": 4, "filter_length": 3,
          "subsample_length": 2, "input_dim": 6, "input_length": 11, "border_mode": "valid", "init": "glorot_normal",
          "W_constraint": {"name": "MaxNorm", "m": 3, "axis": 0}, "b_regularizer": "l1l2"}}]});
    let m = parse_v(&v).unwrap();
    assert_eq!(m.graph.nodes[m.graph.outputs[0]].shape, vec![5, 4]);
    let l = lc_of(&m);
    assert_eq!(l.kernel, vec![3]);
    assert_eq!(l.strides, vec![2]);
    assert!(matches!(
        l.kernel_initializer,
        Initializer::VarianceScaling {
            distribution: Distribution::UntruncatedNormal,
            ..
        }
    ));
    assert_eq!(
        l.options.kernel_constraint,
        Some(Constraint::MaxNorm {
            max_value: 3.0,
            axis: vec![0]
        })
    );
    let r = l.options.bias_regularizer.unwrap();
    assert_eq!((r.l1, r.l2), (0.01, 0.01));
}

#[test]
fn keras2_dialect_rules() {
    let mut v = lc2d(
        json!({"kernel_initializer": {"class_name": "VarianceScaling",
        "config": {"scale": 2.0, "mode": "fan_in", "distribution": "normal", "seed": null}},
        "kernel_regularizer": {"class_name": "L1L2", "config": {"l1": 0.0, "l2": 0.009999999776482582}}}),
    );
    v["keras_version"] = json!("2.1.6");
    let m = parse_v(&v).unwrap();
    assert_eq!(m.dialect, Dialect::Keras2);
    let l = lc_of(&m);
    assert!(matches!(
        l.kernel_initializer,
        Initializer::VarianceScaling {
            distribution: Distribution::TruncatedNormalUncorrected,
            ..
        }
    ));
    assert_eq!(l.options.kernel_regularizer.unwrap().l2, 0.01);
    v["keras_version"] = json!("2.21.0");
    let l = lc_of(&parse_v(&v).unwrap());
    assert!(matches!(
        l.kernel_initializer,
        Initializer::VarianceScaling {
            distribution: Distribution::TruncatedNormal,
            ..
        }
    ));
    // Keras 2 LC1D ignores data_format; `same` is illegal there.
    let mut v = seq(
        json!([null, 10, 4]),
        "LocallyConnected1D",
        json!({"name": "lc", "filters": 2, "kernel_size": 3, "data_format": "channels_first"}),
    );
    v["keras_version"] = json!("2.3.1");
    let l = lc_of(&parse_v(&v).unwrap());
    assert_eq!(l.data_format, DataFormat::ChannelsLast);
    v["config"]["layers"][1]["config"]["padding"] = json!("SAME");
    assert_field_err(parse_v(&v), "lc", "padding", "only 'valid'");
}

#[test]
fn tf_keras_lc_options() {
    let m = parse_v(&lc2d(json!({"padding": "SAME", "implementation": 3, "data_format": null,
        "activation": {"module": "keras.layers", "class_name": "LeakyReLU", "config": {"alpha": 0.1}},
        "kernel_constraint": "max_norm", "bias_initializer": "ones", "dilation_rate": [1, 1],
        "dtype": {"module": "keras.mixed_precision", "class_name": "Policy", "config": {"name": "mixed_float16"}}})))
    .unwrap();
    let l = lc_of(&m);
    assert_eq!(l.padding, Padding::Same);
    assert_eq!(l.implementation, 3);
    assert_eq!(l.data_format, DataFormat::ChannelsLast);
    assert_eq!(l.activation, Activation::LeakyRelu { alpha: 0.1 });
    assert_eq!(l.bias_initializer, Initializer::Ones);
    assert_eq!(
        l.options.kernel_constraint,
        Some(Constraint::MaxNorm {
            max_value: 2.0,
            axis: vec![0]
        })
    );
    assert_eq!(m.graph.nodes[m.graph.outputs[0]].shape, vec![8, 8, 2]);
    let id = m.graph.node_by_name("lc").expect("node");
    assert_eq!(
        m.graph.nodes[id].policy,
        crate::graph::DtypePolicy {
            compute: crate::graph::ComputeDtype::Float16,
            as_object: true
        }
    );
}

#[test]
fn lc3d_extension() {
    let v = seq(
        json!([null, 5, 6, 7, 2]),
        "LocallyConnected3D",
        json!({"name": "lc", "filters": 3, "kernel_size": [2, 3, 4], "strides": [1, 1, 2]}),
    );
    let m = parse_v(&v).unwrap();
    assert_eq!(m.graph.nodes[m.graph.outputs[0]].shape, vec![4, 4, 2, 3]);
}

#[test]
fn activations_by_name() {
    let names = [
        "linear",
        "relu",
        "sigmoid",
        "tanh",
        "softmax",
        "log_softmax",
        "elu",
        "selu",
        "softplus",
        "softsign",
        "hard_sigmoid",
        "exponential",
        "swish",
        "silu",
        "gelu",
        "relu6",
        "mish",
        "leaky_relu",
    ];
    for n in names {
        let m = parse_v(&lc2d(json!({"activation": n}))).unwrap();
        let _ = lc_of(&m).activation;
    }
    let l = lc_of(&parse_v(&lc2d(json!({"activation": "leaky_relu"}))).unwrap());
    assert_eq!(l.activation, Activation::LeakyRelu { alpha: 0.2 });
    let l = lc_of(&parse_v(&lc2d(json!({"activation": null}))).unwrap());
    assert_eq!(l.activation, Activation::Linear);
}

#[test]
fn activation_layers_and_axes() {
    let v = seq(
        json!([null, 4, 5, 6]),
        "BatchNormalization",
        json!({"name": "bn", "axis": [1], "epsilon": 0.01}),
    );
    match op_of(&parse_v(&v).unwrap(), "bn") {
        Op::BatchNorm(b) => assert_eq!((b.axis, b.epsilon), (0, 0.01)),
        o => panic!("{o:?}"),
    }
    let v = seq(
        json!([null, 4, 5, 6]),
        "BatchNormalization",
        json!({"name": "bn", "axis": 3}),
    );
    match op_of(&parse_v(&v).unwrap(), "bn") {
        Op::BatchNorm(b) => assert_eq!(b.axis, 2),
        o => panic!("{o:?}"),
    }
    let v = seq(
        json!([null, 4, 5]),
        "BatchNormalization",
        json!({"name": "bn", "axis": 0}),
    );
    assert_field_err(parse_v(&v), "bn", "axis", "batch");
    let v = seq(
        json!([null, 4, 5]),
        "Softmax",
        json!({"name": "sm", "axis": 1}),
    );
    assert_eq!(
        op_of(&parse_v(&v).unwrap(), "sm"),
        Op::Activation(Activation::Softmax { axis: 0 })
    );
    let v = seq(
        json!([null, 4]),
        "ReLU",
        json!({"name": "r", "max_value": 6.0, "negative_slope": 0.1}),
    );
    assert_eq!(
        op_of(&parse_v(&v).unwrap(), "r"),
        Op::Activation(Activation::Relu {
            alpha: 0.1,
            max_value: Some(6.0),
            threshold: 0.0
        })
    );
    let v = seq(json!([null, 4]), "LeakyReLU", json!({"name": "r"}));
    assert_eq!(
        op_of(&parse_v(&v).unwrap(), "r"),
        Op::Activation(Activation::LeakyRelu { alpha: 0.3 })
    );
}

#[test]
fn other_layers_parse() {
    let cases = [
        (
            json!([null, 8, 8, 3]),
            "Conv2D",
            json!({"filters": 4, "kernel_size": 3, "padding": "same", "dilation_rate": 2}),
            vec![8, 8, 4],
        ),
        (
            json!([null, 10, 3]),
            "Conv1D",
            json!({"filters": 4, "kernel_size": 3, "padding": "causal"}),
            vec![10, 4],
        ),
        (
            json!([null, 3, 8, 8]),
            "Convolution2D",
            json!({"nb_filter": 4, "nb_row": 3, "nb_col": 2, "dim_ordering": "th", "subsample": [1, 2]}),
            vec![4, 6, 4],
        ),
        (
            json!([null, 8, 8, 3]),
            "MaxPooling2D",
            json!({"pool_size": [2, 2], "strides": null}),
            vec![4, 4, 3],
        ),
        (
            json!([null, 9, 3]),
            "AveragePooling1D",
            json!({"pool_length": 3, "stride": 2}),
            vec![4, 3],
        ),
        (
            json!([null, 8, 8, 3]),
            "GlobalMaxPooling2D",
            json!({"keepdims": true}),
            vec![1, 1, 3],
        ),
        (
            json!([null, 8, 3]),
            "GlobalAveragePooling1D",
            json!({}),
            vec![3],
        ),
        (
            json!([null, 8, 8, 3]),
            "ZeroPadding2D",
            json!({"padding": [[1, 2], [0, 1]]}),
            vec![11, 9, 3],
        ),
        (
            json!([null, 8, 8, 3]),
            "ZeroPadding2D",
            json!({"padding": [1, 2, 3, 4], "dim_ordering": "tf"}),
            vec![11, 15, 3],
        ),
        (
            json!([null, 8, 3]),
            "ZeroPadding1D",
            json!({"padding": [1, 2]}),
            vec![11, 3],
        ),
        (
            json!([null, 8, 8, 3]),
            "Cropping2D",
            json!({"cropping": 1}),
            vec![6, 6, 3],
        ),
        (
            json!([null, 8, 3]),
            "Cropping1D",
            json!({"cropping": [1, 2]}),
            vec![5, 3],
        ),
        (
            json!([null, 4, 6]),
            "Reshape",
            json!({"target_shape": [-1, 3]}),
            vec![8, 3],
        ),
        (
            json!([null, 4, 6]),
            "Permute",
            json!({"dims": [2, 1]}),
            vec![6, 4],
        ),
        (
            json!([null, 4, 6]),
            "SpatialDropout1D",
            json!({"rate": 0.5}),
            vec![4, 6],
        ),
        (
            json!([null, 4, 6]),
            "Dropout",
            json!({"p": 0.5}),
            vec![4, 6],
        ),
        (
            json!([null, 4, 6]),
            "Activation",
            json!({"activation": "tanh"}),
            vec![4, 6],
        ),
        (json!([null, 4, 6]), "ELU", json!({}), vec![4, 6]),
        (
            json!([null, 4, 6]),
            "Flatten",
            json!({"data_format": "channels_last"}),
            vec![24],
        ),
    ];
    for (shape, class, cfg, want) in cases {
        let m = parse_v(&seq(shape, class, cfg.clone()))
            .unwrap_or_else(|e| panic!("{class} {cfg}: {e}"));
        assert_eq!(
            m.graph.nodes[m.graph.outputs[0]].shape, want,
            "{class} {cfg}"
        );
    }
}

// ---- bad layer fields ----------------------------------------------------------------------

#[test]
fn bad_sizes() {
    for (extra, field, needle) in [
        (json!({"filters": 0}), "filters", ">= 1"),
        (json!({"filters": -3}), "filters", ">= 1"),
        (json!({"filters": 2.5}), "filters", "not an integer"),
        (json!({"filters": "two"}), "filters", "integer"),
        (
            json!({"filters": 1_000_000_000_000u64}),
            "filters",
            "absurd",
        ),
        (json!({"filters": 1e300}), "filters", "integer"),
        (json!({"strides": [0, 1]}), "strides", ">= 1"),
        (
            json!({"kernel_size": [3, 3, 3]}),
            "kernel_size",
            "2 entries",
        ),
        (json!({"kernel_size": null}), "kernel_size", "missing"),
    ] {
        assert_field_err(parse_v(&lc2d(extra)), "lc", field, needle);
    }
}

#[test]
fn kernel_larger_than_input_is_a_shape_error() {
    let e = parse_v(&lc2d(json!({"kernel_size": [9, 3]}))).unwrap_err();
    assert!(
        matches!(e, Error::Shape { ref layer, .. } if layer == "lc"),
        "{e:?}"
    );
}

#[test]
fn huge_layers_hit_the_budget() {
    let v = seq(
        json!([null, 64, 64, 64]),
        "LocallyConnected2D",
        json!({"name": "lc", "filters": 1_000_000, "kernel_size": 3}),
    );
    let e = parse_v(&v).unwrap_err();
    assert!(
        matches!(e, Error::Budget { ref layer, .. } if layer == "lc"),
        "{e:?}"
    );
}

#[test]
fn bad_enums() {
    for (extra, field, needle) in [
        (json!({"padding": "full"}), "padding", "unknown padding"),
        (
            json!({"padding": "same"}),
            "padding",
            "implementation 2 or 3",
        ),
        (
            json!({"padding": "causal", "implementation": 2}),
            "padding",
            "not supported",
        ),
        (
            json!({"data_format": "channels_middle"}),
            "data_format",
            "unknown data format",
        ),
        (
            json!({"activation": "swoosh"}),
            "activation",
            "unknown activation",
        ),
        (
            json!({"activation": {"class_name": "PReLU", "config": {}}}),
            "activation",
            "PReLU",
        ),
        (
            json!({"implementation": 4}),
            "implementation",
            "unknown implementation",
        ),
        (
            json!({"kernel_initializer": "glorot_sideways"}),
            "kernel_initializer",
            "unknown initializer",
        ),
        (
            json!({"kernel_initializer": {"class_name": "VarianceScaling", "config": {"mode": "fan_up"}}}),
            "kernel_initializer.mode",
            "unknown mode",
        ),
        (
            json!({"kernel_regularizer": "l3"}),
            "kernel_regularizer",
            "unknown regularizer",
        ),
        (
            json!({"bias_constraint": {"class_name": "Clip", "config": {}}}),
            "bias_constraint",
            "unknown constraint",
        ),
        (json!({"dtype": "float64"}), "dtype", "float64"),
        (
            json!({"dtype": {"class_name": "Policy", "config": {"name": "float16"}}}),
            "dtype",
            "float16",
        ),
        (json!({"use_bias": "yes"}), "use_bias", "true or false"),
    ] {
        assert_field_err(parse_v(&lc2d(extra)), "lc", field, needle);
    }
    let mut v = seq(
        json!([null, 3, 10, 10]),
        "LocallyConnected2D",
        json!({"name": "lc", "nb_filter": 2, "nb_row": 3, "nb_col": 3, "border_mode": "same", "dim_ordering": "th"}),
    );
    v["keras_version"] = json!("1.2.2");
    assert_field_err(parse_v(&v), "lc", "border_mode", "only 'valid'");
}

#[test]
fn unknown_layer_class() {
    let e = parse_v(&seq(
        json!([null, 4]),
        "Bidirectional",
        json!({"name": "bi"}),
    ))
    .unwrap_err();
    match e {
        Error::UnknownLayer {
            source_name,
            layer,
            class_name,
        } => {
            assert_eq!(
                (source_name.as_str(), layer.as_str(), class_name.as_str()),
                ("test.json", "bi", "Bidirectional")
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_input_shapes() {
    let lc = json!({"name": "lc", "filters": 2, "kernel_size": 1});
    for (shape, needle) in [
        (json!([null, 8, null, 3]), "unknown (null)"),
        (json!([null, 8, -8, 3]), "not in 1..="),
        (json!([null, 8, 0, 3]), "not in 1..="),
        (json!([null, 8, 1e12, 3]), "not in 1..="),
        (json!([null]), "no per-sample"),
        (json!([]), "empty"),
        (json!([-1, 8, 8, 3]), "batch size"),
        (json!("8x8"), "expected a list"),
    ] {
        assert_field_err(
            parse_v(&seq(shape, "LocallyConnected2D", lc.clone())),
            "in",
            "batch_input_shape",
            needle,
        );
    }
    let v = json!({"class_name": "Sequential", "config": {"layers": [
        {"class_name": "InputLayer", "config": {"name": "in"}}]}});
    assert_field_err(parse_v(&v), "in", "batch_input_shape", "missing");
    let v = json!({"class_name": "Sequential", "config": {"layers": [
        {"class_name": "Dense", "config": {"name": "d", "units": 2}}]}});
    assert_field_err(parse_v(&v), "d", "batch_input_shape", "missing");
}

#[test]
fn variance_scaling_normal_by_version() {
    let dist = |version: &str, init: Value| {
        let mut v = lc2d(json!({ "kernel_initializer": init }));
        v["keras_version"] = json!(version);
        match lc_of(&parse_v(&v).unwrap()).kernel_initializer {
            Initializer::VarianceScaling { distribution, .. } => distribution,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        dist("2.1.3", json!("he_normal")),
        Distribution::TruncatedNormalUncorrected
    );
    assert_eq!(
        dist("2.2.4", json!("he_normal")),
        Distribution::TruncatedNormal
    );
    assert_eq!(
        dist("2.1.6-tf", json!("he_normal")),
        Distribution::TruncatedNormal
    );
    assert_eq!(
        dist("2.21.0", json!("glorot_normal")),
        Distribution::TruncatedNormal
    );
    let vs =
        json!({"class_name": "VarianceScaling", "config": {"distribution": "untruncated_normal"}});
    assert_eq!(dist("2.21.0", vs), Distribution::UntruncatedNormal);
}

#[test]
fn keras1_zero_padding_dict_and_orthogonal() {
    let v = json!({"class_name": "Sequential", "keras_version": "1.2.2", "config": [
        {"class_name": "ZeroPadding1D", "config": {"name": "z", "batch_input_shape": [null, 6, 2],
          "padding": {"left_pad": 1, "right_pad": 3}}},
        {"class_name": "Dense", "config": {"name": "d", "output_dim": 2, "init": "orthogonal"}}]});
    let m = parse_v(&v).unwrap();
    assert_eq!(m.graph.nodes[m.graph.outputs[0]].shape, vec![10, 2]);
    match op_of(&m, "d") {
        Op::Dense(d) => assert_eq!(d.kernel_initializer, Initializer::Orthogonal { gain: 1.1 }),
        o => panic!("{o:?}"),
    }
}

#[test]
fn sequential_structure_errors() {
    let v = json!({"class_name": "Sequential", "config": {"layers": [
        {"class_name": "Dense", "config": {"name": "d", "units": 2, "batch_input_shape": [null, 3]}},
        {"class_name": "InputLayer", "config": {"name": "late", "batch_input_shape": [null, 2]}}]}});
    assert_graph_err(parse_v(&v), &["InputLayer 'late'", "test.json"]);
    let v = json!({"class_name": "Sequential", "config": {"layers": [
        {"class_name": "Dense", "config": {"name": "d", "units": 2, "batch_input_shape": [null, 3]}},
        {"class_name": "Dense", "config": {"name": "d", "units": 2}}]}});
    assert_graph_err(parse_v(&v), &["duplicate layer name 'd'"]);
    assert_config_err(
        parse_v(&json!({"class_name": "Sequential", "config": {"layers": []}})),
        "no layers",
    );
    assert_config_err(
        parse_v(&json!({"class_name": "Sequential", "config": 3})),
        "Sequential config",
    );
}
