//! Resuming an interrupted `fit` gives exactly the run that was never interrupted: final
//! weights (trainable and BatchNorm statistics), optimizer state, history, CSV log and
//! callback decisions bit for bit, with the state taken through its file.
//!
//! The interruption is raised deterministically by a callback (`lcjit::interrupt::raise`)
//! after a chosen global step or at the end of a chosen epoch. The flag is process-wide,
//! so the tests of this file run one at a time (a lock) and lower it after each run.
//! Covered: shuffle on, Dropout and BatchNorm (training randomness and non-trainable
//! parameters), validation_split, metrics (accuracy and AUC's confusion counts),
//! EarlyStopping with restore_best_weights, ReduceLROnPlateau with cooldown, CSVLogger,
//! ModelCheckpoint (save_best_only), TerminateOnNaN; Adam, SGD with momentum, Nadam and RMSprop; interruptions mid-epoch,
//! after an epoch's last step, between epochs, and twice in one run; refusals of a state
//! for other options or data and of corrupt files.

mod common;

use common::{random, relu, uniform};
use lcjit::graph::{Activation, BatchNorm, DataFormat, Dense, Graph, Op, WeightOptions};
use lcjit::train::callbacks::Logs;
use lcjit::train::{
    fit_compiled, parse_loss_arg, parse_optimizer_arg, CSVLogger, Callback, Control, EarlyStopping,
    EarlyStoppingConfig, FitOptions, History, Metric, ModelCheckpoint, ModelCheckpointConfig,
    Optimizer, OptimizerState, ReduceLROnPlateau, ReduceLROnPlateauConfig, Resume, ResumeSlot,
    ResumeState, TerminateOnNaN,
};
use lcjit::{CompileOptions, Engine, Error, Model};
use ndarray::{ArrayD, IxDyn};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Named arrays, as a weights file holds them.
type Arrays = Vec<(String, ArrayD<f32>)>;

/// The interruption flag is global: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const ADAM: &str = r#"{"class_name":"Adam","config":{"learning_rate":0.01}}"#;
const SGD: &str = r#"{"class_name":"SGD","config":{"learning_rate":0.05,"momentum":0.9}}"#;
const NADAM: &str = r#"{"class_name":"Nadam","config":{"learning_rate":0.01}}"#;
const RMSPROP: &str =
    r#"{"class_name":"RMSprop","config":{"learning_rate":0.01,"momentum":0.5,"centered":true}}"#;

fn dense(units: usize, activation: Activation) -> Op {
    Op::Dense(Dense {
        units,
        activation,
        use_bias: true,
        kernel_initializer: uniform(-0.5, 0.5),
        bias_initializer: uniform(-0.1, 0.1),
        options: WeightOptions::default(),
    })
}

/// Dense → BatchNorm → Dropout → softmax classifier.
fn graph() -> Graph {
    let mut g = Graph::new("clf");
    let x = g.add_input("x", vec![6]).expect("x");
    let h = g.add("h", dense(8, relu()), &[x]).expect("h");
    let bn = Op::BatchNorm(BatchNorm {
        axis: 0,
        epsilon: 1e-3,
        momentum: 0.9,
        center: true,
        scale: true,
        initializers: [
            uniform(0.5, 1.5),
            uniform(-0.5, 0.5),
            uniform(-0.5, 0.5),
            uniform(0.5, 1.5),
        ],
        options: WeightOptions::default(),
    });
    let b = g.add("bn", bn, &[h]).expect("bn");
    let drop = Op::Dropout {
        rate: 0.3,
        spatial: None,
        data_format: DataFormat::ChannelsLast,
    };
    let d = g.add("drop", drop, &[b]).expect("dropout");
    let y = g
        .add("y", dense(3, Activation::Softmax { axis: -1 }), &[d])
        .expect("y");
    g.outputs.push(y);
    g
}

/// 22 samples: 16 train (batches of 5: four steps, the last of one sample), 6 validation.
fn data() -> (ArrayD<f32>, ArrayD<f32>) {
    let xs = random(&[22, 6], 5);
    let labels: Vec<f32> = (0..22)
        .flat_map(|i| (0..3).map(move |c| if (i * 7) % 3 == c { 1.0 } else { 0.0 }))
        .collect();
    (
        xs,
        ArrayD::from_shape_vec(IxDyn(&[22, 3]), labels).expect("ys"),
    )
}

/// Raises the interruption after global step `at_step` (1-based, counted over epochs)
/// or at the end of epoch `at_epoch`; stateless, as a user's callback would be.
struct Interrupter {
    at_step: Option<usize>,
    at_epoch: Option<usize>,
    steps: usize,
}

impl Callback for Interrupter {
    fn on_train_batch_end(
        &mut self,
        _b: usize,
        _l: &Logs,
        _c: &mut Control<'_>,
    ) -> lcjit::Result<()> {
        self.steps += 1;
        if Some(self.steps) == self.at_step {
            lcjit::interrupt::raise();
        }
        Ok(())
    }

    fn on_epoch_end(
        &mut self,
        epoch: usize,
        _l: &mut Logs,
        _c: &mut Control<'_>,
    ) -> lcjit::Result<()> {
        if Some(epoch) == self.at_epoch {
            lcjit::interrupt::raise();
        }
        Ok(())
    }
}

/// The checkpoint files `<prefix>-ck*.npz`, sorted: name after the prefix, arrays.
fn checkpoints(prefix: &str) -> Vec<(String, Arrays)> {
    let mut out = Vec::new();
    let dir = Path::new(prefix).parent().expect("dir");
    for e in std::fs::read_dir(dir).expect("list") {
        let p = e.expect("entry").path();
        let name = p.display().to_string();
        if let Some(rest) = name.strip_prefix(&format!("{prefix}-ck")) {
            out.push((
                rest.to_string(),
                lcjit::io::read_npz(&p).expect("checkpoint"),
            ));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// How a run that did not finish ended.
#[derive(Debug)]
enum Stop {
    /// Interrupted, leaving this state.
    Interrupted(Box<ResumeState>),
    /// Refused or failed.
    Failed(Error),
}

/// One scenario: optimizer, shuffle, batch size, epochs.
#[derive(Clone)]
struct Setup {
    optimizer: &'static str,
    shuffle: Option<u64>,
    batch_size: usize,
    epochs: usize,
    dir: PathBuf,
}

/// What a finished run produced.
#[derive(Debug, PartialEq)]
struct Outcome {
    params: Vec<ArrayD<f32>>,
    optimizer: OptimizerState,
    history: History,
    csv: String,
    /// ModelCheckpoint's files (save_best_only): name after the run's prefix, arrays.
    checkpoints: Vec<(String, Arrays)>,
    stopped_epoch: usize,
    best: f64,
}

impl Setup {
    fn new(tag: &str, optimizer: &'static str, shuffle: Option<u64>) -> Setup {
        let dir = std::env::temp_dir().join(format!("lcjit-resume-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        Setup {
            optimizer,
            shuffle,
            batch_size: 5,
            epochs: 6,
            dir,
        }
    }

    fn opts(&self, resume: Resume) -> FitOptions {
        FitOptions {
            epochs: self.epochs,
            batch_size: self.batch_size,
            shuffle: self.shuffle,
            validation_split: 0.25,
            metrics: vec![
                Metric::parse_arg("accuracy").expect("accuracy"),
                Metric::parse_arg("AUC").expect("auc"),
            ],
            seed: 11,
            resume,
            ..FitOptions::default()
        }
    }

    /// Trains from a fresh model, optimizer and callbacks (the CSV log at `csv`); an
    /// interruption per `interrupter`; resumes from `from`. Returns the outcome, or the
    /// state left by an interruption.
    fn run(
        &self,
        csv: &Path,
        interrupter: Interrupter,
        from: Option<ResumeState>,
    ) -> Result<Outcome, Stop> {
        let mut model = Model::from_graph(graph(), 3).expect("model");
        let (xs, ys) = data();
        let config = parse_optimizer_arg(self.optimizer).expect("optimizer");
        let mut opt = Optimizer::new(config);
        let loss = parse_loss_arg("categorical_crossentropy").expect("loss");
        let mut es = EarlyStopping::new(EarlyStoppingConfig {
            monitor: "val_loss".into(),
            patience: 3,
            restore_best_weights: true,
            ..EarlyStoppingConfig::default()
        });
        let mut rlr = ReduceLROnPlateau::new(ReduceLROnPlateauConfig {
            monitor: "loss".into(),
            patience: 1,
            factor: 0.5,
            min_delta: 0.05,
            cooldown: 1,
            ..ReduceLROnPlateauConfig::default()
        })
        .expect("rlr");
        let mut log = CSVLogger::new(csv);
        let prefix = csv.with_extension("").display().to_string();
        let mut ck = ModelCheckpoint::new(ModelCheckpointConfig {
            monitor: "val_loss".into(),
            save_best_only: true,
            save_weights_only: true,
            ..ModelCheckpointConfig::new(format!("{prefix}-ck{{epoch:02d}}.npz"))
        })
        .expect("checkpoint");
        let mut nan = TerminateOnNaN::new();
        let mut interrupter = interrupter;
        let slot = ResumeSlot::new();
        let opts = self.opts(Resume {
            from: from.map(Arc::new),
            capture: Some(slot.clone()),
        });
        let compile = CompileOptions {
            engine: Engine::Jit,
            threads: 1,
            max_batch: self.batch_size,
            ..Default::default()
        };
        let result = {
            let mut cbs: [&mut dyn Callback; 6] = [
                &mut nan,
                &mut rlr,
                &mut es,
                &mut ck,
                &mut log,
                &mut interrupter,
            ];
            fit_compiled(
                &mut model, &mut opt, &loss, &xs, &ys, None, &opts, &compile, &mut cbs,
            )
        };
        lcjit::interrupt::reset();
        match result {
            Ok(history) => Ok(Outcome {
                params: model.params().to_vec(),
                optimizer: opt.export_state(),
                history,
                csv: std::fs::read_to_string(csv).expect("csv"),
                checkpoints: checkpoints(&prefix),
                stopped_epoch: es.stopped_epoch(),
                best: es.best(),
            }),
            Err(Error::Interrupted { .. }) => Err(Stop::Interrupted(Box::new(
                slot.take().expect("state captured"),
            ))),
            Err(e) => Err(Stop::Failed(e)),
        }
    }

    /// The state through its file: written, read back, equal but for the file name.
    fn through_file(&self, state: ResumeState, name: &str) -> ResumeState {
        let path = self.dir.join(name);
        lcjit::io::write_resume_state(&path, &state).expect("write state");
        let back = lcjit::io::read_resume_state(&path).expect("read state");
        assert_eq!(back.source_name, path.display().to_string());
        let mut same = back.clone();
        same.source_name.clear();
        assert_eq!(same, state, "the file keeps every field");
        back
    }

    /// Uninterrupted vs interrupted at each point of `points` (in turn, resuming in
    /// between): every outcome field equal.
    fn check(&self, points: &[Interrupter]) {
        let _guard = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let never = || Interrupter {
            at_step: None,
            at_epoch: None,
            steps: 0,
        };
        let want = self
            .run(&self.dir.join("full.csv"), never(), None)
            .unwrap_or_else(|s| panic!("uninterrupted run did not finish: {s:?}"));
        assert!(want.history.len() >= 3, "{:?}", want.history);
        let csv = self.dir.join("part.csv");
        let mut from = None;
        let mut steps_before = 0;
        for (i, p) in points.iter().enumerate() {
            let at = Interrupter {
                at_step: p.at_step.map(|s| s - steps_before),
                at_epoch: p.at_epoch,
                steps: 0,
            };
            let state = match self.run(&csv, at, from.take()) {
                Err(Stop::Interrupted(s)) => *s,
                other => panic!("interruption {i} did not happen: {other:?}"),
            };
            let state = self.through_file(state, &format!("state{i}.resume"));
            steps_before = (state.epoch) * 4 + state.accumulators.steps_done;
            from = Some(state);
        }
        let got = self
            .run(&csv, never(), from)
            .unwrap_or_else(|s| panic!("resumed run did not finish: {s:?}"));
        assert_eq!(got.history, want.history, "history");
        assert_eq!(got.optimizer, want.optimizer, "optimizer state");
        assert_eq!(got.params, want.params, "weights");
        assert_eq!(got.csv, want.csv, "CSV log");
        assert!(!want.checkpoints.is_empty());
        assert_eq!(got.checkpoints, want.checkpoints, "checkpoints");
        assert_eq!(
            (got.stopped_epoch, got.best.to_bits()),
            (want.stopped_epoch, want.best.to_bits())
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn step(n: usize) -> Interrupter {
    Interrupter {
        at_step: Some(n),
        at_epoch: None,
        steps: 0,
    }
}

fn epoch_end(e: usize) -> Interrupter {
    Interrupter {
        at_step: None,
        at_epoch: Some(e),
        steps: 0,
    }
}

#[test]
fn adam_mid_epoch_with_shuffle_dropout_and_metrics() {
    // Step 6: epoch 2 after 2 of its 4 steps.
    Setup::new("adam", ADAM, Some(7)).check(&[step(6)]);
}

#[test]
fn sgd_momentum_at_epoch_boundaries() {
    // After the last step of epoch 2 (validation and on_epoch_end not yet run), and
    // between epochs (raised in on_epoch_end, noticed before the next epoch begins).
    Setup::new("sgd-last", SGD, Some(3)).check(&[step(8)]);
    Setup::new("sgd-between", SGD, Some(3)).check(&[epoch_end(1)]);
}

#[test]
fn nadam_interrupted_twice_without_shuffle() {
    Setup::new("nadam", NADAM, None).check(&[step(3), step(13)]);
}

#[test]
fn rmsprop_centered_momentum_mid_epoch() {
    Setup::new("rmsprop", RMSPROP, Some(1)).check(&[step(10)]);
}

/// A state the run in `setup` leaves after step 6.
fn state_of(setup: &Setup) -> ResumeState {
    let csv = setup.dir.join("s.csv");
    match setup.run(&csv, step(6), None) {
        Err(Stop::Interrupted(s)) => *s,
        other => panic!("not interrupted: {other:?}"),
    }
}

#[test]
fn a_state_for_other_options_or_data_is_refused_naming_the_field() {
    let _guard = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let setup = Setup::new("mismatch", ADAM, Some(7));
    let state = setup.through_file(state_of(&setup), "s.resume");
    let file = state.source_name.clone();
    let refused = |setup: &Setup, state: ResumeState, field: &str| {
        // The state's own CSV and checkpoint paths: callback configurations are checked.
        let csv = setup.dir.join("s.csv");
        let never = Interrupter {
            at_step: None,
            at_epoch: None,
            steps: 0,
        };
        let msg = match setup.run(&csv, never, Some(state)) {
            Err(Stop::Failed(e @ Error::Resume { .. })) => e.to_string(),
            other => panic!("a state for another {field} was not refused: {other:?}"),
        };
        assert!(msg.contains(&format!("field '{field}'")), "{msg}");
        assert!(msg.contains(&file), "{msg}");
    };
    let mut other = setup.clone();
    other.batch_size = 4;
    refused(&other, state.clone(), "fingerprint.batch_size");
    let mut other = setup.clone();
    other.epochs = 9;
    refused(&other, state.clone(), "fingerprint.epochs");
    let mut other = setup.clone();
    other.shuffle = Some(8);
    refused(&other, state.clone(), "fingerprint.shuffle");
    let mut other = setup.clone();
    other.optimizer = SGD;
    refused(&other, state.clone(), "fingerprint.optimizer");
    // The same fingerprint with a damaged body.
    let mut bad = state.clone();
    bad.params.pop();
    refused(&setup, bad, "params");
    let mut bad = state.clone();
    bad.shuffle_state = None;
    refused(&setup, bad, "shuffle_state");
    let mut bad = state.clone();
    bad.randomness = None;
    refused(&setup, bad, "randomness");
    let mut bad = state.clone();
    bad.accumulators.steps_done = 5;
    refused(&setup, bad, "position");
    let mut bad = state.clone();
    bad.optimizer.slots[0][0] = Some(ArrayD::zeros(IxDyn(&[1])));
    refused(&setup, bad, "optimizer.slots[0][0]");
    let mut bad = state.clone();
    bad.accumulators.metrics[0].resolution = Some("sideways".into());
    refused(&setup, bad, "accumulators.metrics[0].resolution");
    let mut bad = state.clone();
    bad.callbacks.swap(1, 2);
    refused(&setup, bad, "callbacks[1].kind");
    // Another patience for EarlyStopping.
    let mut bad = state.clone();
    if let Some(Some(es)) = bad.callbacks.get_mut(2) {
        let config = es
            .text("config")
            .expect("config")
            .replace("patience: 3", "patience: 4");
        es.set("config", lcjit::train::callbacks::StateValue::Text(config));
    }
    refused(&setup, bad, "callbacks[2].config");
    let _ = std::fs::remove_dir_all(&setup.dir);
}

#[test]
fn corrupt_state_files_are_refused_naming_file_and_field() {
    let _guard = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let setup = Setup::new("corrupt", SGD, Some(7));
    let path = setup.dir.join("s.resume");
    lcjit::io::write_resume_state(&path, &state_of(&setup)).expect("write");
    let bytes = std::fs::read(&path).expect("read");
    let name = path.display().to_string();
    // Over the memory budget: the file, then state.json at 4× its size.
    let e = lcjit::io::read_resume_state_within(&path, 100).expect_err("budget");
    assert!(
        matches!(e, Error::FileBudget { .. }) && e.to_string().contains(&name),
        "{e}"
    );
    let e = lcjit::io::read_resume_state_within(&path, bytes.len() as u64 + 10).expect_err("json");
    assert!(matches!(e, Error::FileBudget { .. }), "{e}");
    assert!(e.to_string().contains("entry 'state.json'"), "{e}");
    // Truncated: the zip directory is gone.
    let cut = setup.dir.join("cut.resume");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write");
    let e = lcjit::io::read_resume_state(&cut).expect_err("truncated");
    assert!(matches!(e, Error::Format { .. }), "{e}");
    assert!(e.to_string().contains("cut.resume"), "{e}");
    // A flipped byte in the data of the last array: the entry's checksum fails.
    let mut flipped = bytes.clone();
    let magic = b"\x93NUMPY";
    let last = (0..bytes.len() - magic.len())
        .rev()
        .find(|&i| &bytes[i..i + magic.len()] == magic)
        .expect("an npy entry");
    flipped[last + 129] ^= 0x40;
    let fl = setup.dir.join("flip.resume");
    std::fs::write(&fl, &flipped).expect("write");
    let e = lcjit::io::read_resume_state(&fl).expect_err("flipped");
    assert!(e.to_string().contains("flip.resume"), "{e}");
    // state.json edited: each damage is named by its field.
    for (edit, field) in [
        (("\"epoch\":1", "\"epoch\":\"one\""), "epoch"),
        (("\"version\":1", "\"version\":7"), "version"),
        (
            ("\"iterations\":", "\"iterationz\":"),
            "optimizer.iterations",
        ),
        (
            ("\"steps_done\":", "\"steps_done\":-"),
            "accumulators.steps_done",
        ),
    ] {
        let p = setup.dir.join("edit.resume");
        rewrite_json(&path, &p, edit);
        let e = lcjit::io::read_resume_state(&p).expect_err("edited");
        let msg = e.to_string();
        assert!(matches!(e, Error::Resume { .. }), "{msg}");
        assert!(
            msg.contains(&format!("field '{field}'")) && msg.contains("edit.resume"),
            "{msg}"
        );
    }
    // An array missing from the archive.
    let p = setup.dir.join("noarray.resume");
    copy_zip(&path, &p, |n, t| (n != "params/0.npy").then(|| t.to_vec()));
    let e = lcjit::io::read_resume_state(&p).expect_err("missing array");
    let msg = e.to_string();
    assert!(
        msg.contains("'params/0.npy' is missing")
            && msg.contains(&name.replace("s.resume", "noarray.resume")),
        "{msg}"
    );
    let _ = std::fs::remove_dir_all(&setup.dir);
}

/// Copies the zip `from` to `to`, each entry through `f(name, bytes)` (`None` drops it).
fn copy_zip(from: &Path, to: &Path, f: impl Fn(&str, &[u8]) -> Option<Vec<u8>>) {
    use std::io::{Read, Write};
    let mut zin = zip::ZipArchive::new(std::fs::File::open(from).expect("open")).expect("zip");
    let mut zout = zip::ZipWriter::new(std::fs::File::create(to).expect("create"));
    for i in 0..zin.len() {
        let mut e = zin.by_index(i).expect("entry");
        let name = e.name().to_string();
        let mut bytes = Vec::new();
        e.read_to_end(&mut bytes).expect("read entry");
        if let Some(b) = f(&name, &bytes) {
            let o = zip::write::SimpleFileOptions::default();
            zout.start_file(name, o).expect("start");
            zout.write_all(&b).expect("write");
        }
    }
    zout.finish().expect("finish");
}

/// Copies the state `from` to `to` with `state.json`'s first `find` replaced by `with`.
fn rewrite_json(from: &Path, to: &Path, (find, with): (&str, &str)) {
    copy_zip(from, to, |n, b| {
        if n != "state.json" {
            return Some(b.to_vec());
        }
        let text = String::from_utf8(b.to_vec()).expect("utf8");
        assert!(text.contains(find), "{find} not in state.json");
        Some(text.replacen(find, with, 1).into_bytes())
    });
}
