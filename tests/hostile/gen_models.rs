//! Hostile Keras JSON configurations (absurd sizes, sizes that only the batch makes
//! absurd) and command-line arguments (batch sizes of 2^62 and 10^18, budgets).

use super::gen::{args, bad, ok, seq};
use super::images::npy_f32;
use super::Case;
use serde_json::{json, Value};
use std::fs;
use std::path::Path;

fn case(name: &str, args: Vec<String>, expect: super::Expect) -> Case {
    Case {
        name: name.to_owned(),
        args,
        expect,
    }
}

fn layer(class: &str, config: Value) -> Value {
    json!({"class_name": class, "config": config})
}

pub fn config_cases(dir: &Path, cases: &mut Vec<Case>) {
    let dense = |units: Value| {
        seq(
            &[4],
            &[layer("Dense", json!({"name": "d", "units": units}))],
        )
    };
    let lc1d = |k: u64, impl_: u64| {
        seq(
            &[4, 1],
            &[layer(
                "LocallyConnected1D",
                json!({"name": "lc", "filters": 1, "kernel_size": [k], "padding": "same", "implementation": impl_}),
            )],
        )
    };
    let list: Vec<(&str, Value, super::Expect)> = vec![
        (
            "dense_units_2_40",
            dense(json!(1u64 << 40)),
            bad("Budget", "layer 'd'"),
        ),
        (
            "dense_units_2_62",
            dense(json!(1u64 << 62)),
            bad("Budget", "layer 'd'"),
        ),
        (
            "dense_units_u64_max",
            dense(json!(u64::MAX)),
            bad("Budget", "layer 'd'"),
        ),
        (
            "dense_units_negative",
            dense(json!(-3)),
            bad("LayerConfig", "units"),
        ),
        (
            "dense_units_float",
            dense(json!(1e30)),
            bad("LayerConfig", "units"),
        ),
        ("dense_units_zero", dense(json!(0)), bad("", "units")),
        (
            "dense_units_string",
            dense(json!("many")),
            bad("LayerConfig", "units"),
        ),
        (
            "input_2_62_squared",
            seq(&[1 << 62, 1 << 62], &[]),
            bad("LayerConfig", "batch_input_shape"),
        ),
        (
            "input_2_31_cubed",
            seq(
                &[1 << 31, 1 << 31, 1 << 31],
                &[layer("Flatten", json!({"name": "f"}))],
            ),
            bad("LayerConfig", "batch_input_shape"),
        ),
        ("input_zero", seq(&[0, 4], &[]), bad("Shape", "zero")),
        (
            "lc1d_impl2_kernel_2_29",
            lc1d(1 << 29, 2),
            bad("Budget", "layer 'lc'"),
        ),
        (
            "lc1d_impl1_kernel_2_29",
            lc1d(1 << 29, 1),
            bad("Budget", "layer 'lc'"),
        ),
        ("lc1d_impl2_kernel_2_62", lc1d(1 << 62, 2), bad("", "lc")),
        (
            "lc2d_filters_huge",
            seq(
                &[8, 8, 3],
                &[layer(
                    "LocallyConnected2D",
                    json!({"name": "lc", "filters": 1u64 << 40, "kernel_size": [3, 3]}),
                )],
            ),
            bad("Budget", "layer 'lc'"),
        ),
        (
            "conv2d_filters_huge",
            seq(
                &[8, 8, 3],
                &[layer(
                    "Conv2D",
                    json!({"name": "c", "filters": 1u64 << 40, "kernel_size": [3, 3]}),
                )],
            ),
            bad("Budget", "layer 'c'"),
        ),
        (
            "conv2d_kernel_huge_same",
            seq(
                &[8, 8, 3],
                &[layer(
                    "Conv2D",
                    json!({"name": "c", "filters": 2, "kernel_size": [1u64 << 31, 1u64 << 31], "padding": "same"}),
                )],
            ),
            bad("Budget", "layer 'c'"),
        ),
        (
            "zeropad1d_2_30",
            seq(
                &[4, 1],
                &[layer(
                    "ZeroPadding1D",
                    json!({"name": "zp", "padding": [1u64 << 30, 1u64 << 30]}),
                )],
            ),
            bad("Budget", "layer 'zp'"),
        ),
        (
            "zeropad1d_2_63",
            seq(
                &[4, 1],
                &[layer(
                    "ZeroPadding1D",
                    json!({"name": "zp", "padding": [1u64 << 63, 1u64 << 63]}),
                )],
            ),
            bad("", "zp"),
        ),
        (
            "upsampling_2_40",
            seq(
                &[4, 1],
                &[layer(
                    "UpSampling1D",
                    json!({"name": "up", "size": 1u64 << 40}),
                )],
            ),
            bad("UnknownLayer", "UpSampling1D"),
        ),
        (
            "repeat_2_40",
            seq(
                &[4],
                &[layer(
                    "RepeatVector",
                    json!({"name": "rep", "n": 1u64 << 40}),
                )],
            ),
            bad("UnknownLayer", "RepeatVector"),
        ),
        (
            "reshape_huge",
            seq(
                &[4],
                &[layer(
                    "Reshape",
                    json!({"name": "r", "target_shape": [1u64 << 40, 1u64 << 40]}),
                )],
            ),
            bad("", "'r'"),
        ),
        (
            "deep_json",
            serde_json::from_str::<Value>(&format!("{}{}", "[".repeat(100), "]".repeat(100)))
                .unwrap_or(Value::Null),
            bad("", ""),
        ),
    ];
    for (name, v, expect) in list {
        let file = format!("json_{name}.json");
        fs::write(dir.join(&file), v.to_string()).expect("write");
        cases.push(case(
            &format!("json_{name}"),
            args(&["summary", &format!("@{file}")]),
            expect,
        ));
    }
    // Nesting beyond serde_json's recursion limit, written as text.
    fs::write(dir.join("json_nesting_100k.json"), "[".repeat(100_000)).expect("write");
    cases.push(case(
        "json_nesting_100k",
        args(&["summary", "@json_nesting_100k.json"]),
        bad("Config", "recursion limit"),
    ));
    fs::write(dir.join("json_not_utf8.json"), [0xffu8, 0xfe, 0x7b]).expect("write");
    cases.push(case(
        "json_not_utf8",
        args(&["summary", "@json_not_utf8.json"]),
        bad("Format", "UTF-8"),
    ));
    // Sizes that only the batch makes absurd: each sample fits, the batch does not.
    let wide = seq(
        &[1],
        &[layer("Dense", json!({"name": "wide", "units": 1u64 << 24}))],
    );
    fs::write(dir.join("json_dense_wide.json"), wide.to_string()).expect("write");
    fs::write(dir.join("x1.npy"), npy_f32(&[64, 1], &[0.5; 64])).expect("write");
    cases.push(case(
        "json_dense_wide_summary",
        args(&["summary", "@json_dense_wide.json"]),
        ok(),
    ));
    cases.push(case(
        "json_dense_wide_batch_64",
        args(&[
            "run",
            "@json_dense_wide.json",
            "--input",
            "@x1.npy",
            "--output",
            "%y.npy",
            "--batch-size",
            "64",
        ]),
        bad("Budget", "batch size 64"),
    ));
    cases.push(case(
        "json_dense_wide_reference_64",
        args(&[
            "run",
            "@json_dense_wide.json",
            "--input",
            "@x1.npy",
            "--output",
            "%y.npy",
            "--batch-size",
            "64",
            "--engine",
            "reference",
        ]),
        bad("Budget", "batch size 64"),
    ));
    cases.push(case(
        "json_dense_wide_fit",
        args(&[
            "fit",
            "@json_dense_wide.json",
            "--x",
            "@x1.npy",
            "--y",
            "@x1.npy",
            "--optimizer",
            "adam",
            "--loss",
            "mse",
            "--batch-size",
            "64",
            "--quiet",
        ]),
        bad("Budget", "batch size 64"),
    ));
    cases.push(case(
        "json_zeropad_2_26_run",
        args(&[
            "run",
            "@json_zeropad_2_26.json",
            "--input",
            "@x41.npy",
            "--output",
            "%y.npy",
            "--batch-size",
            "32",
        ]),
        bad("Budget", "layer 'zp'"),
    ));
    let zp = seq(
        &[4, 1],
        &[layer(
            "ZeroPadding1D",
            json!({"name": "zp", "padding": [1u64 << 26, 1u64 << 26]}),
        )],
    );
    fs::write(dir.join("json_zeropad_2_26.json"), zp.to_string()).expect("write");
    fs::write(dir.join("x41.npy"), npy_f32(&[2, 4, 1], &[0.5; 8])).expect("write");
}

pub fn cli_cases(cases: &mut Vec<Case>) {
    let run = |extra: &[&str]| {
        let mut a = args(&[
            "run",
            "@dense.json",
            "--input",
            "@x.npy",
            "--output",
            "%y.npy",
        ]);
        a.extend(args(extra));
        a
    };
    let p62 = (1u64 << 62).to_string();
    let e18 = "1000000000000000000";
    let list: Vec<(&str, Vec<String>, super::Expect)> = vec![
        (
            "run_batch_10_18",
            run(&["--batch-size", e18]),
            bad("Budget", "batch size 1000000000000000000"),
        ),
        (
            "run_batch_2_62",
            run(&["--batch-size", &p62]),
            bad("Budget", "more than"),
        ),
        (
            "run_batch_usize_max",
            run(&["--batch-size", &u64::MAX.to_string()]),
            bad("Budget", "more than"),
        ),
        (
            "run_batch_reference_10_18",
            run(&["--batch-size", e18, "--engine", "reference"]),
            bad("Budget", "batch size"),
        ),
        (
            "run_batch_interp_10_18",
            run(&["--batch-size", e18, "--engine", "interp"]),
            bad("Budget", "batch size"),
        ),
        (
            "run_batch_zero",
            run(&["--batch-size", "0"]),
            bad("Usage", "at least 1"),
        ),
        (
            "run_batch_negative",
            run(&["--batch-size", "-1"]),
            bad("clap", "-1"),
        ),
        (
            "run_batch_2_64",
            run(&["--batch-size", "18446744073709551616"]),
            bad("clap", "--batch-size"),
        ),
        (
            "run_threads_zero",
            run(&["--threads", "0"]),
            bad("Usage", "at least 1"),
        ),
        (
            "run_budget_100_bytes",
            run(&["--memory-budget", "100"]),
            bad("FileBudget", "dense.json"),
        ),
        (
            "run_budget_zero",
            run(&["--memory-budget", "0"]),
            bad("", "memory budget"),
        ),
        (
            "run_budget_garbage",
            run(&["--memory-budget", "lots"]),
            bad("clap", "byte count"),
        ),
        (
            "run_budget_overflow",
            run(&["--memory-budget", "99999999999999999G"]),
            bad("clap", "byte count"),
        ),
        (
            "fit_batch_10_18",
            args(&[
                "fit",
                "@dense.json",
                "--x",
                "@x.npy",
                "--y",
                "@y.npy",
                "--optimizer",
                "sgd",
                "--loss",
                "mse",
                "--batch-size",
                e18,
                "--quiet",
            ]),
            bad("Budget", "batch size"),
        ),
        (
            "fit_batch_2_62",
            args(&[
                "fit",
                "@dense.json",
                "--x",
                "@x.npy",
                "--y",
                "@y.npy",
                "--optimizer",
                "sgd",
                "--loss",
                "mse",
                "--batch-size",
                &p62,
                "--quiet",
            ]),
            bad("Budget", "batch size"),
        ),
        (
            "fit_reference_batch_10_18",
            args(&[
                "fit",
                "@dense.json",
                "--x",
                "@x.npy",
                "--y",
                "@y.npy",
                "--optimizer",
                "sgd",
                "--loss",
                "mse",
                "--batch-size",
                e18,
                "--engine",
                "reference",
                "--quiet",
            ]),
            bad("Budget", "batch size"),
        ),
        (
            "evaluate_batch_10_18",
            args(&[
                "evaluate",
                "@dense.json",
                "--x",
                "@x.npy",
                "--y",
                "@y.npy",
                "--loss",
                "mse",
                "--batch-size",
                e18,
            ]),
            bad("Budget", "batch size"),
        ),
        (
            "bench_batch_2_62",
            args(&[
                "bench",
                "@dense.json",
                "--batch",
                &p62,
                "--no-probe",
                "--engines",
                "jit",
            ]),
            bad("Budget", "batch size"),
        ),
        (
            "aot_batch_2_62",
            args(&[
                "aot",
                "@dense.json",
                "--batch",
                &p62,
                "--output",
                "%m.o",
                "--header",
                "%m.h",
            ]),
            bad("Budget", "batch size"),
        ),
        (
            "aot_batch_10_18_grad",
            args(&[
                "aot",
                "@dense.json",
                "--batch",
                e18,
                "--gradients",
                "--output",
                "%m.o",
                "--header",
                "%m.h",
            ]),
            bad("Budget", "batch size"),
        ),
        (
            "ir_loops_batch_2_62",
            args(&["ir", "@dense.json", "--stage", "loops", "--batch", &p62]),
            bad("Budget", "batch size"),
        ),
        (
            "ir_backward_batch_10_18",
            args(&[
                "ir",
                "@dense.json",
                "--stage",
                "loops",
                "--pass",
                "backward",
                "--batch",
                e18,
            ]),
            bad("Budget", "batch size"),
        ),
        (
            "ir_graph_batch_2_62",
            args(&["ir", "@dense.json", "--stage", "graph", "--batch", &p62]),
            ok(),
        ),
        (
            "grad_dy_wrong_shape",
            args(&[
                "grad",
                "@dense.json",
                "--input",
                "@x.npy",
                "--cotangent",
                "@x.npy",
                "--output",
                "%g.npz",
            ]),
            bad("", ""),
        ),
        (
            "summary_budget_64_bytes",
            args(&["--memory-budget", "64", "summary", "@dense.json"]),
            bad("Budget", "memory budget"),
        ),
        ("summary_ok", args(&["summary", "@dense.json"]), ok()),
    ];
    for (name, a, expect) in list {
        cases.push(case(&format!("cli_{name}"), a, expect));
    }
}
