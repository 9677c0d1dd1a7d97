//! Robustness: every field of every golden configuration replaced by odd values parses
//! or fails with a user-facing error — never a panic, never an internal error.

use std::fs;
use std::path::Path;

use lcjit::frontend::parse_model_value;
use serde_json::{json, Value};

fn layers_mut(v: &mut Value) -> Option<&mut Vec<Value>> {
    let c = v.get_mut("config")?;
    if c.is_array() {
        c.as_array_mut()
    } else {
        c.get_mut("layers")?.as_array_mut()
    }
}

#[test]
fn mutated_golden_configs_never_panic() {
    let odd = [
        json!(null),
        json!(-1),
        json!(0),
        json!(1),
        json!(2.5),
        json!(1e300),
        json!(1_000_000_000_000u64),
        json!("x"),
        json!("same"),
        json!([]),
        json!([1, 2, 3, 4, 5]),
        json!([[1, 2], [3]]),
        json!({}),
        json!({"class_name": "X"}),
        json!(true),
    ];
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/keras-golden");
    let mut files: Vec<_> = fs::read_dir(&root)
        .unwrap()
        .flat_map(|e| {
            let d = e.unwrap().path();
            [d.join("model.json"), d.join("keras1.json")]
        })
        .filter(|p| p.exists())
        .collect();
    files.sort();
    let mut parsed = 0usize;
    for f in files {
        let base: Value = serde_json::from_str(&fs::read_to_string(&f).unwrap()).unwrap();
        let n_layers = layers_mut(&mut base.clone()).map_or(0, |l| l.len());
        for li in 0..n_layers.min(6) {
            let keys: Vec<String> = {
                let mut b = base.clone();
                let l = &layers_mut(&mut b).unwrap()[li];
                l["config"]
                    .as_object()
                    .map(|m| m.keys().cloned().collect())
                    .unwrap_or_default()
            };
            for k in keys {
                for o in &odd {
                    let mut v = base.clone();
                    layers_mut(&mut v).unwrap()[li]["config"][&k] = o.clone();
                    let r = std::panic::catch_unwind(|| parse_model_value(&v, "m.json", 1 << 30));
                    match r {
                        Err(_) => panic!("{f:?}: layer {li} key {k} = {o}: panic"),
                        Ok(Err(e)) => {
                            assert!(!e.is_internal(), "{f:?}: layer {li} key {k} = {o}: {e}")
                        }
                        Ok(Ok(_)) => {}
                    }
                    parsed += 1;
                }
            }
            // Mutations of the entry itself (name, class_name, inbound_nodes…).
            let entry_keys: Vec<String> = {
                let mut b = base.clone();
                let l = &layers_mut(&mut b).unwrap()[li];
                l.as_object()
                    .map(|m| m.keys().cloned().collect())
                    .unwrap_or_default()
            };
            for k in entry_keys {
                for o in &odd {
                    let mut v = base.clone();
                    layers_mut(&mut v).unwrap()[li][&k] = o.clone();
                    let r = std::panic::catch_unwind(|| parse_model_value(&v, "m.json", 1 << 30));
                    assert!(
                        r.is_ok_and(|r| r.map_or_else(|e| !e.is_internal(), |_| true)),
                        "{f:?}: layer {li} entry key {k} = {o}"
                    );
                }
            }
            // Whole-layer mutations.
            for o in &odd {
                let mut v = base.clone();
                layers_mut(&mut v).unwrap()[li] = o.clone();
                let r = std::panic::catch_unwind(|| parse_model_value(&v, "m.json", 1 << 30));
                assert!(
                    r.is_ok_and(|r| r.map_or_else(|e| !e.is_internal(), |_| true)),
                    "{f:?}: layer {li} = {o}"
                );
            }
        }
    }
    assert!(parsed > 1000);
}
