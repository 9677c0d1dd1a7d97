//! `lcjit fit` interrupted by a real SIGINT at whatever step it happens to be, then
//! continued with `--resume`: the final weights, history and CSV log equal an
//! uninterrupted run's bit for bit, and no temporary file is left. A truncated state, a
//! state for another batch size, other data or another model is refused with exit 2 and
//! one line naming the file and the field.

use serde_json::json;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::TestDir as Tmp;

fn lcjit(args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lcjit"))
        .args(args)
        .output()
        .expect("spawn lcjit")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// A Dense → Dropout → Dense regression model, its data, and the arguments of a fit
/// with shuffle, validation split, a metric, ReduceLROnPlateau and a CSV log, long
/// enough (`epochs`) to be interrupted.
fn setup(t: &Tmp, epochs: usize) -> Vec<String> {
    let layer =
        |class: &str, config: serde_json::Value| json!({"class_name": class, "config": config});
    let model = json!({"class_name": "Sequential", "config": {"name": "s", "layers": [
        layer("InputLayer", json!({"name": "x", "batch_input_shape": [null, 12]})),
        layer("Dense", json!({"name": "h", "units": 24, "activation": "relu"})),
        layer("Dropout", json!({"name": "drop", "rate": 0.25})),
        layer("Dense", json!({"name": "y", "units": 3})),
    ]}});
    std::fs::write(t.arg("m.json"), model.to_string()).expect("model");
    let xs = ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&[600, 12]), |i| {
        ((i[0] * 7 + i[1] * 3) % 17) as f32 * 0.05 - 0.4
    });
    let ys = ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&[600, 3]), |i| {
        ((i[0] + 2 * i[1]) % 5) as f32 * 0.2
    });
    ndarray_npy::write_npy(t.arg("x.npy"), &xs).expect("x");
    ndarray_npy::write_npy(t.arg("y.npy"), &ys).expect("y");
    [
        "fit",
        &t.arg("m.json"),
        "--x",
        &t.arg("x.npy"),
        "--y",
        &t.arg("y.npy"),
        "--epochs",
        &epochs.to_string(),
        "--batch-size",
        "8",
        "--seed",
        "5",
        "--optimizer",
        "adam",
        "--loss",
        "mse",
        "--metrics",
        "mae",
        "--validation-split",
        "0.2",
        "--reduce-lr-on-plateau",
        "monitor=loss,patience=2,min_delta=0.01",
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `base` plus the outputs of one run, named after `tag`.
fn with_outputs(t: &Tmp, base: &[String], tag: &str) -> Vec<String> {
    let mut a = base.to_vec();
    for (flag, file) in [
        ("--save-weights", format!("{tag}.npz")),
        ("--history", format!("{tag}.json")),
        ("--csv-log", format!("{tag}.csv")),
    ] {
        a.push(flag.into());
        a.push(t.arg(&file));
    }
    a
}

fn read(p: &str) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// The arrays of a weights file, by name.
fn weights(p: &str) -> Vec<(String, ndarray::ArrayD<f32>)> {
    let mut r = ndarray_npy::NpzReader::new(std::fs::File::open(p).expect("open")).expect("npz");
    let mut names = r.names().expect("names");
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let a: ndarray::ArrayD<f32> = r.by_name(&n).expect("array");
            (n, a)
        })
        .collect()
}

/// Runs `args` and sends SIGINT after `delay`; the output.
fn interrupted(args: &[String], delay: Duration) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_lcjit"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    std::thread::sleep(delay);
    // SAFETY: sending a signal to our own child process by its id.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGINT);
    }
    child.wait_with_output().expect("wait")
}

/// Asserts exit 2 and one `error:` line holding every needle.
fn refused(args: &[String], needles: &[&str]) {
    let out = lcjit(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    // One error line (a note about the model's initializers may precede it).
    let errors: Vec<&str> = err.lines().filter(|l| !l.starts_with("note: ")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(errors[0].starts_with("error: "), "{err}");
    let err = errors[0];
    for n in needles {
        assert!(err.contains(n), "{n:?} not in {err}");
    }
}

#[test]
fn sigint_then_resume_equals_the_uninterrupted_run() {
    let t = Tmp::new("cli-resume-sigint");
    let epochs = 150;
    let base = setup(&t, epochs);
    let start = Instant::now();
    let full = lcjit(&with_outputs(&t, &base, "full"));
    let took = start.elapsed();
    assert!(full.status.success(), "{}", stderr(&full));
    // The signal lands wherever the run is: after a fraction of the uninterrupted
    // run's time (retried earlier and later if it came before training started, when
    // SIGINT simply ends the process, or after the run finished).
    let part = with_outputs(&t, &base, "part");
    let state = t.arg("part.npz.resume");
    let mut landed = None;
    for frac in [0.5, 0.3, 0.7, 0.2, 0.85] {
        let _ = std::fs::remove_file(&state);
        let out = interrupted(&part, took.mul_f64(frac));
        let err = stderr(&out);
        if out.status.code() == Some(130) && Path::new(&state).exists() {
            assert!(err.contains(&format!("--resume {state}")), "{err}");
            assert!(
                err.contains("error: interrupted: training stopped "),
                "{err}"
            );
            assert!(t.debris().is_empty(), "{:?}", t.debris());
            landed = Some(err);
            break;
        }
        assert!(matches!(out.status.code(), Some(0) | Some(130)), "{err}");
    }
    let note = landed.expect("no SIGINT landed during training in five tries");
    eprintln!("{note}");

    // Refusals, each one line naming the file and the field.
    let cut = t.arg("cut.resume");
    let bytes = read(&state);
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).expect("write");
    let mut a = part.clone();
    a.extend(["--resume".to_string(), cut.clone()]);
    refused(&a, &[&cut, "not a valid lcjit resume state file"]);
    let other = |flag: &str, value: &str| -> Vec<String> {
        let mut a = part.clone();
        let i = a.iter().position(|x| x == flag).expect("flag") + 1;
        a[i] = value.to_string();
        a.extend(["--resume".to_string(), state.clone()]);
        a
    };
    refused(
        &other("--batch-size", "4"),
        &[
            &state,
            "field 'fingerprint.batch_size'",
            "written for 8, this run has 4",
        ],
    );
    let mut ys = ndarray_npy::read_npy::<_, ndarray::ArrayD<f32>>(t.arg("y.npy")).expect("y");
    ys[[0, 0]] += 1.0;
    ndarray_npy::write_npy(t.arg("y2.npy"), &ys).expect("y2");
    refused(
        &other("--y", &t.arg("y2.npy")),
        &[&state, "field 'fingerprint.data'"],
    );
    let model = std::fs::read_to_string(t.arg("m.json"))
        .expect("model")
        .replace("\"units\":24", "\"units\":25");
    std::fs::write(t.arg("m2.json"), model).expect("m2");
    let mut a = other("--seed", "5");
    a[1] = t.arg("m2.json");
    refused(&a, &[&state, "field 'fingerprint.model'"]);

    // The resumed run completes the interrupted one exactly.
    let mut a = part.clone();
    a.extend(["--resume".to_string(), state.clone()]);
    let out = lcjit(&a);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(weights(&t.arg("part.npz")), weights(&t.arg("full.npz")));
    assert_eq!(read(&t.arg("part.json")), read(&t.arg("full.json")));
    assert_eq!(read(&t.arg("part.csv")), read(&t.arg("full.csv")));
    let history = String::from_utf8(read(&t.arg("full.json"))).expect("json");
    assert!(history.contains("\"lr\""), "{history}");
    assert!(t.debris().is_empty(), "{:?}", t.debris());
}
