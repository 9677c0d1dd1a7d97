//! Each Keras metric's formula: against tf-keras 2.21 metric objects updated with two
//! batches (`tests/data/evaluate/formulas.*`, made by `make.py`), and on hand-computable
//! cases (AUC of a four-point ROC, ties in argmax and top-k, the clipping epsilons); name
//! resolution and the logged names; serialized metrics as `.h5` training configs hold them.

use lcjit::io;
use lcjit::train::metrics::{AucConfig, AucCurve, AucSummation, MetricKind};
use lcjit::train::{parse_metrics, Loss, Metric};
use ndarray::{ArrayD, IxDyn};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;

/// Two batches as `(y_true key, y_pred key)` of `formulas.npz`.
type Batches = [(String, String); 2];

fn arr(shape: &[usize], v: &[f32]) -> ArrayD<f32> {
    ArrayD::from_shape_vec(IxDyn(shape), v.to_vec()).expect("shape")
}

/// The metric's result after one update per `(y_true, y_pred)` batch.
fn run(m: &Metric, batches: &[(&ArrayD<f32>, &ArrayD<f32>)]) -> f64 {
    let mut s = m.state();
    for (t, p) in batches {
        s.update(t, p).expect("update");
    }
    s.result()
}

fn close(got: f64, want: f64, what: &str) {
    let err = (got - want).abs() / want.abs().max(1.0);
    assert!(err <= 1e-4, "{what}: {got}, Keras {want} ({err:.2e})");
}

#[test]
fn formulas_match_keras_metric_objects() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/evaluate");
    let a: HashMap<String, ArrayD<f32>> = io::read_npz(&dir.join("formulas.npz"))
        .expect("npz")
        .into_iter()
        .collect();
    let want: HashMap<String, f64> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("formulas.json")).expect("json"))
            .expect("parse");
    let get = |k: &str| &a[k];
    let abs = |x: &ArrayD<f32>| x.mapv(f32::abs);
    let (pos_t0, pos_p0, pos_t1, pos_p1) = (
        abs(get("reg_t0")),
        abs(get("reg_p0")),
        abs(get("reg_t1")),
        abs(get("reg_p1")),
    );
    let logits: Vec<ArrayD<f32>> = (0..2)
        .map(|i| get(&format!("bin_p{i}")).mapv(|p| p * 8.0 - 4.0))
        .collect();
    let rounded: Vec<ArrayD<f32>> = (0..2)
        .map(|i| get(&format!("bin_p{i}")).mapv(f32::round_ties_even)) // np.round rounds half to even
        .collect();
    let pair = |t: &str, p: &str| [0, 1].map(|i| (format!("{t}{i}"), format!("{p}{i}")));
    let cases: Vec<(&str, Value, Batches)> = vec![
        ("mae", json!("mae"), pair("reg_t", "reg_p")),
        ("mse", json!("mse"), pair("reg_t", "reg_p")),
        (
            "rmse",
            json!("RootMeanSquaredError"),
            pair("reg_t", "reg_p"),
        ),
        ("mape", json!("mape"), pair("reg_t", "reg_p")),
        ("msle", json!("msle"), pair("reg_t", "reg_p")),
        (
            "cosine_similarity",
            json!("cosine_similarity"),
            pair("reg_t", "reg_p"),
        ),
        ("logcosh", json!("logcosh"), pair("reg_t", "reg_p")),
        ("hinge", json!("hinge"), pair("reg_t", "reg_p")),
        (
            "squared_hinge",
            json!("squared_hinge"),
            pair("reg_t", "reg_p"),
        ),
        (
            "categorical_hinge",
            json!("categorical_hinge"),
            pair("reg_t", "reg_p"),
        ),
        (
            "categorical_accuracy",
            json!("categorical_accuracy"),
            pair("onehot", "prob_p"),
        ),
        (
            "sparse_categorical_accuracy",
            json!("sparse_categorical_accuracy"),
            pair("sparse", "prob_p"),
        ),
        (
            "top2",
            json!({"class_name": "TopKCategoricalAccuracy", "config": {"k": 2}}),
            pair("onehot", "prob_p"),
        ),
        (
            "sparse_top2",
            json!({"class_name": "SparseTopKCategoricalAccuracy", "config": {"k": 2}}),
            pair("sparse", "prob_p"),
        ),
        (
            "categorical_crossentropy",
            json!("categorical_crossentropy"),
            pair("onehot", "prob_p"),
        ),
        (
            "sparse_categorical_crossentropy",
            json!("sparse_categorical_crossentropy"),
            pair("sparse", "prob_p"),
        ),
        (
            "kld",
            json!("kullback_leibler_divergence"),
            pair("onehot", "prob_p"),
        ),
        (
            "binary_accuracy",
            json!("binary_accuracy"),
            pair("bin_t", "bin_p"),
        ),
        (
            "binary_crossentropy",
            json!("binary_crossentropy"),
            pair("bin_t", "bin_p"),
        ),
        ("auc", json!("AUC"), pair("bin_t", "bin_p")),
        (
            "auc_pr",
            json!({"class_name": "AUC", "config": {"curve": "PR"}}),
            pair("bin_t", "bin_p"),
        ),
        (
            "auc_prgain",
            json!({"class_name": "AUC", "config": {"curve": "PR_GAIN"}}),
            pair("bin_t", "bin_p"),
        ),
        (
            "auc_min",
            json!({"class_name": "AUC", "config": {"num_thresholds": 3, "summation_method": "minoring"}}),
            pair("bin_t", "bin_p"),
        ),
        (
            "auc_maj",
            json!({"class_name": "AUC", "config": {"num_thresholds": 3, "summation_method": "majoring"}}),
            pair("bin_t", "bin_p"),
        ),
        (
            "auc_thr",
            json!({"class_name": "AUC", "config": {"thresholds": [0.2, 0.3, 0.7]}}),
            pair("bin_t", "bin_p"),
        ),
        (
            "auc_multiclass_flat",
            json!("auc"),
            pair("onehot", "prob_p"),
        ),
    ];
    for (key, spec, [(t0, p0), (t1, p1)]) in &cases {
        let m = Metric::from_config(spec).expect("metric");
        let got = run(&m, &[(get(t0), get(p0)), (get(t1), get(p1))]);
        close(got, want[*key], key);
    }
    let pos = [(&pos_t0, &pos_p0), (&pos_t1, &pos_p1)];
    close(
        run(&Metric::parse_arg("msle").expect("m"), &pos),
        want["msle_pos"],
        "msle_pos",
    );
    close(
        run(&Metric::parse_arg("poisson").expect("m"), &pos),
        want["poisson"],
        "poisson",
    );
    let auc_logits =
        Metric::from_config(&json!({"class_name": "AUC", "config": {"from_logits": true}}))
            .expect("auc");
    let got = run(
        &auc_logits,
        &[(get("bin_t0"), &logits[0]), (get("bin_t1"), &logits[1])],
    );
    close(got, want["auc_logits"], "auc_logits");
    let eq =
        Metric::from_config(&json!({"class_name": "Accuracy", "config": {"name": "accuracy"}}))
            .expect("Accuracy");
    let got = run(
        &eq,
        &[(get("bin_t0"), &rounded[0]), (get("bin_t1"), &rounded[1])],
    );
    close(got, want["accuracy_eq"], "accuracy_eq");
}

/// ROC of y = [0, 0, 1, 1], p = [0.1, 0.4, 0.35, 0.8]: 3 of the 4 (positive, negative)
/// pairs are ordered right, AUC 0.75. With 3 thresholds [−ε, 0.5, 1+ε] the points are
/// (FPR, TPR) = (1, 1), (0, 0.5), (0, 0): trapezoids give 0.75, minoring 0.5, majoring 1;
/// PR interpolation on 3 thresholds: recall 1→0.5 at precision 0.5→1, then 0.5→0.
#[test]
fn auc_hand_computed() {
    let t = arr(&[4, 1], &[0.0, 0.0, 1.0, 1.0]);
    let p = arr(&[4, 1], &[0.1, 0.4, 0.35, 0.8]);
    let auc = |cfg: AucConfig| run(&Metric::new("auc", MetricKind::Auc(cfg)), &[(&t, &p)]);
    let d = AucConfig::default();
    close(auc(d.clone()), 0.75, "roc 200");
    let three = AucConfig {
        num_thresholds: 3,
        ..d.clone()
    };
    close(auc(three.clone()), 0.75, "roc 3");
    let s = |summation| AucConfig {
        summation,
        ..three.clone()
    };
    close(auc(s(AucSummation::Minoring)), 0.5, "minoring");
    close(auc(s(AucSummation::Majoring)), 1.0, "majoring");
    // PR, Davis-Goadrich on [A=(tp 2, p 4), B=(1, 1)]: slope 1/3, intercept 2/3,
    // (1/3)(1 + (2/3) ln 4) / 1 … divided by tp+fn at B (2): 0.26969…; then B→C: p_C = 0
    // so ratio 1, slope 1, (1·1)/2 = 0.5.
    let pr = AucConfig {
        curve: AucCurve::Pr,
        ..three
    };
    let first = (1.0 / 3.0) * (1.0 + (2.0 / 3.0) * 4f64.ln()) / 2.0;
    close(auc(pr), first + 0.5, "pr interpolation");
    // A prediction exactly on a threshold counts as negative there (p > t).
    let on = arr(&[2, 1], &[0.5, 0.5]);
    let tt = arr(&[2, 1], &[1.0, 0.0]);
    let m = Metric::new(
        "auc",
        MetricKind::Auc(AucConfig {
            num_thresholds: 3,
            ..AucConfig::default()
        }),
    );
    close(run(&m, &[(&tt, &on)]), 0.5, "tied predictions");
    // Reset forgets the matrices.
    let mut st = m.state();
    st.update(&t, &p).expect("update");
    st.reset();
    st.update(&tt, &on).expect("update");
    close(st.result(), 0.5, "after reset");
}

#[test]
fn hand_computed_formulas() {
    let m = |n: &str| Metric::parse_arg(n).expect(n);
    // binary accuracy: threshold 0.5, strict; mean over the last axis, then samples.
    let t = arr(&[2, 2], &[1.0, 0.0, 1.0, 1.0]);
    let p = arr(&[2, 2], &[0.5, 0.2, 0.9, 0.51]);
    close(
        run(&m("binary_accuracy"), &[(&t, &p)]),
        0.75,
        "binary_accuracy",
    );
    let b3 =
        Metric::from_config(&json!({"class_name": "BinaryAccuracy", "config": {"threshold": 0.3}}))
            .expect("b3");
    close(run(&b3, &[(&t, &p)]), 1.0, "threshold 0.3");
    // argmax ties pick the first index; in_top_k counts every class tied with the k-th.
    let probs = arr(&[2, 3], &[0.4, 0.4, 0.2, 0.1, 0.3, 0.3]);
    let labels = arr(&[2], &[1.0, 2.0]);
    close(
        run(&m("sparse_categorical_accuracy"), &[(&labels, &probs)]),
        0.0,
        "ties",
    );
    let top1 = Metric::from_config(
        &json!({"class_name": "SparseTopKCategoricalAccuracy", "config": {"k": 1}}),
    )
    .expect("top1");
    close(run(&top1, &[(&labels, &probs)]), 1.0, "in_top_k ties");
    // MAPE clips |t| at 1e-7: a zero target gives 100·|p|/1e-7.
    let z = arr(&[1, 1], &[0.0]);
    let q = arr(&[1, 1], &[1e-6]);
    close(run(&m("mape"), &[(&z, &q)]) / 1000.0, 1.0, "mape epsilon");
    // Cosine of a zero prediction is 0 (l2_normalize's 1e-12), and 1 for parallel rows.
    let ct = arr(&[2, 2], &[3.0, 4.0, 1.0, 0.0]);
    let cp = arr(&[2, 2], &[6.0, 8.0, 0.0, 0.0]);
    close(run(&m("cosine_similarity"), &[(&ct, &cp)]), 0.5, "cosine");
    // Mean over samples across batches of different sizes: (2·1 + 1·4) / 3.
    let mae = m("mae");
    let (t1, p1) = (arr(&[2, 1], &[0.0, 0.0]), arr(&[2, 1], &[1.0, -1.0]));
    let (t2, p2) = (arr(&[1, 1], &[0.0]), arr(&[1, 1], &[4.0]));
    close(run(&mae, &[(&t1, &p1), (&t2, &p2)]), 2.0, "weighted mean");
    // logcosh(x) = x + softplus(−2x) − log 2.
    let x = 0.7f64;
    let lc = (x.cosh()).ln();
    close(
        run(
            &m("logcosh"),
            &[(&arr(&[1, 1], &[0.0]), &arr(&[1, 1], &[0.7]))],
        ),
        lc,
        "logcosh",
    );
}

#[test]
fn names_and_resolution() {
    let loss = Loss::MeanSquaredError;
    let name = |s: &str| Metric::parse(s, &loss).expect(s).name().to_string();
    assert_eq!(name("mae"), "mae");
    assert_eq!(name("mean_absolute_error"), "mean_absolute_error");
    assert_eq!(name("MAE"), "MAE");
    assert_eq!(name("acc"), "acc");
    assert_eq!(name("AUC"), "auc");
    assert_eq!(name("auc"), "auc");
    assert_eq!(name("MeanAbsoluteError"), "mean_absolute_error");
    assert_eq!(name("LogCoshError"), "logcosh");
    assert!(
        Metric::parse("bce", &loss).is_none(),
        "tf-keras rejects 'bce' as a metric"
    );
    // 'accuracy' follows the shapes, not the loss.
    let acc = Metric::parse("accuracy", &loss).expect("accuracy");
    let one = arr(&[3, 1], &[0.2, 0.7, 0.9]);
    let flat = arr(&[3], &[0.0, 1.0, 0.0]);
    close(
        run(&acc, &[(&flat, &one)]),
        2.0 / 3.0,
        "binary by a last dim of 1",
    );
    let probs = arr(&[3, 2], &[0.9, 0.1, 0.2, 0.8, 0.6, 0.4]);
    close(run(&acc, &[(&flat, &probs)]), 1.0, "sparse by rank");
    let onehot = arr(&[3, 2], &[1.0, 0.0, 0.0, 1.0, 0.0, 1.0]);
    close(run(&acc, &[(&onehot, &probs)]), 2.0 / 3.0, "categorical");
    let ce = Metric::parse("ce", &loss).expect("ce");
    let want = -(0.9f64.ln() + 0.8f64.ln() + 0.6f64.ln()) / 3.0;
    close(run(&ce, &[(&flat, &probs)]), want, "sparse crossentropy");
}

/// The `training_config` of a tf-keras `.h5`: `MeanMetricWrapper` with the resolved `fn`
/// and the user's name, metric classes with options, `weighted_metrics` renamed on a clash.
#[test]
fn serialized_metrics() {
    let tc = json!({
        "loss": "binary_crossentropy",
        "metrics": [[
            {"class_name": "MeanMetricWrapper", "config": {"name": "acc", "dtype": "float32", "fn": "binary_accuracy"}},
            {"class_name": "AUC", "config": {"name": "auc", "num_thresholds": 50, "curve": "ROC",
              "summation_method": "interpolation", "multi_label": false, "num_labels": null,
              "label_weights": null, "from_logits": false}},
            {"class_name": "TopKCategoricalAccuracy", "config": {"name": "top2", "k": 2}},
            {"module": "keras.metrics", "class_name": "Accuracy", "config": {"name": "accuracy"}},
            "mae"
        ]],
        "weighted_metrics": [[{"class_name": "MeanMetricWrapper", "config": {"name": "mae", "fn": "mean_absolute_error"}}]]
    });
    let ms = parse_metrics(&tc, "t.h5").expect("metrics");
    let names: Vec<&str> = ms.iter().map(Metric::name).collect();
    assert_eq!(
        names,
        ["acc", "auc", "top2", "accuracy", "mae", "weighted_mae"]
    );
    assert_eq!(ms[0].kind(), &MetricKind::BinaryAccuracy { threshold: 0.5 });
    assert_eq!(ms[2].kind(), &MetricKind::TopKCategoricalAccuracy { k: 2 });
    assert_eq!(ms[3].kind(), &MetricKind::Equal);
    match ms[1].kind() {
        MetricKind::Auc(c) => assert_eq!(c.num_thresholds, 50),
        k => panic!("AUC parsed as {k:?}"),
    }
    for (bad, needle) in [
        (
            json!({"metrics": ["f1_scorez"]}),
            "unknown metric 'f1_scorez'",
        ),
        (
            json!({"metrics": [{"class_name": "AUC", "config": {"multi_label": true}}]}),
            "multi_label",
        ),
        (
            json!({"metrics": [{"class_name": "MeanMetricWrapper", "config": {"fn": "nope"}}]}),
            "'nope'",
        ),
        (
            json!({"metrics": ["mae", "mae"]}),
            "two metrics are named 'mae'",
        ),
        (json!({"metrics": [3]}), "found 3"),
    ] {
        let e = parse_metrics(&bad, "t.h5").expect_err("rejected");
        let s = e.to_string();
        assert!(s.contains("t.h5") && s.contains(needle), "{s}");
    }
}
