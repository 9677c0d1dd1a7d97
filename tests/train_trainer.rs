//! The custom-loop trainer (`lcjit::train::Trainer`, what Python's `compute_gradients` /
//! `apply_gradients` and `lcjit.distributed.fit` run): a loop of `compute_gradients` then
//! `apply_gradients` over the batches `fit` sees (`epoch_orders`) reproduces `fit` bit
//! for bit — losses and final weights — on every golden training case, on the JIT with
//! shuffling on: BatchNorm moving statistics are assigned after the update as `fit`
//! does, and a trainer seeded like `fit` draws the same Dropout masks.

use lcjit::train::{
    epoch_orders, fit_compiled, parse_training_config, FitOptions, Optimizer, Trainer,
};
use lcjit::{io, CompileOptions, Engine, Model};
use ndarray::Axis;
use std::path::{Path, PathBuf};

fn cases() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/keras-golden");
    let mut out: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("golden dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("compiled.h5").exists())
        .collect();
    out.sort();
    out
}

#[test]
fn trainer_loop_is_fit_bit_for_bit() {
    let (epochs, batch, seed) = (2, 3, 11);
    let mut checked = 0;
    for case in cases() {
        let name = case.display().to_string();
        let model = Model::load(case.join("compiled.h5")).expect("load");
        let setup = parse_training_config(model.training_config().expect("tc"), &name)
            .expect("training config");
        let xs = io::read_npy(&case.join("xs.npy")).expect("xs");
        let ys = io::read_npy(&case.join("ys.npy")).expect("ys");
        let compile = CompileOptions {
            engine: Engine::Jit,
            threads: 2,
            max_batch: batch,
            ..Default::default()
        };
        // fit, shuffled.
        let mut fitted = model.clone();
        let mut opt = Optimizer::new(setup.optimizer.clone());
        let opts = FitOptions {
            epochs,
            batch_size: batch,
            shuffle: Some(seed),
            seed,
            ..FitOptions::default()
        };
        let h = fit_compiled(
            &mut fitted,
            &mut opt,
            &setup.loss,
            &xs,
            &ys,
            None,
            &opts,
            &compile,
            &mut [],
        )
        .expect("fit");
        // The same batches by hand.
        let mut hand = model.clone();
        let mut t = Trainer::new(
            &hand,
            Optimizer::new(setup.optimizer.clone()),
            &setup.loss,
            &compile,
            seed,
        )
        .expect("trainer");
        let mut params = t.extended().params(&hand).expect("params");
        let n = xs.shape()[0];
        for (epoch, order) in epoch_orders(n, epochs, Some(seed)).iter().enumerate() {
            let (mut sum, mut count) = (0.0, 0.0);
            for idx in order.chunks(batch) {
                let xb = xs.select(Axis(0), idx);
                let yb = ys.select(Axis(0), idx);
                let (loss, grads) = t.compute_gradients(&params, &xb, &yb).expect("grads");
                t.apply_gradients(&mut params, &grads).expect("apply");
                sum += loss * idx.len() as f64;
                count += idx.len() as f64;
            }
            let want = h.loss()[epoch];
            assert_eq!(sum / count, want, "{name}: epoch {epoch} loss");
        }
        t.extended().store(&mut hand, params).expect("store");
        for (a, b) in hand.params().iter().zip(fitted.params()) {
            assert_eq!(a, b, "{name}: weights differ");
        }
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} cases checked");
}

#[test]
fn epoch_orders_unshuffled_and_seeded() {
    let plain = epoch_orders(5, 2, None);
    assert_eq!(plain, vec![vec![0, 1, 2, 3, 4], vec![0, 1, 2, 3, 4]]);
    let a = epoch_orders(50, 3, Some(4));
    assert_eq!(a, epoch_orders(50, 3, Some(4)));
    assert_ne!(a[0], a[1], "a new permutation per epoch");
    let mut sorted = a[2].clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..50).collect::<Vec<_>>());
}
