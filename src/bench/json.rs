//! The `lcjit bench --json` line, built with serde: field names and nesting are a
//! contract (scripts and tests parse them), so they are spelled out here as types rather
//! than derived from [`BenchReport`]'s own layout. Missing measurements are `null`.

use super::report::BenchReport;

/// The whole line.
#[derive(serde::Serialize)]
struct JsonReport<'a> {
    model: &'a str,
    batch: usize,
    threads: usize,
    params: usize,
    weight_bytes: u64,
    weights_dtype: &'static str,
    stored_weight_bytes: u64,
    traffic_bytes: u64,
    flops: JsonFlops,
    compile_ms: JsonPasses,
    forward_ms: JsonEngines,
    train_step_ms: JsonEngines,
    gbps: Option<f64>,
    gflops: Option<f64>,
    roofline: JsonRoofline,
    /// Autotuning, when it ran (`null` without).
    tune: Option<JsonTune>,
}

#[derive(serde::Serialize)]
struct JsonTune {
    ms: Option<f64>,
    layers: Vec<JsonTrial>,
}

/// One layer key's tuning: `ms` maps each candidate family to its best time (`null`
/// when not timed), default first in `candidates`.
#[derive(serde::Serialize)]
struct JsonTrial {
    layers: Vec<String>,
    chosen: &'static str,
    decided: &'static str,
    candidates: Vec<&'static str>,
    ms: Vec<Option<f64>>,
}

#[derive(serde::Serialize)]
struct JsonFlops {
    forward: u64,
    train_step: Option<u64>,
}

#[derive(serde::Serialize)]
struct JsonPasses {
    forward: Option<f64>,
    backward: Option<f64>,
}

#[derive(serde::Serialize)]
struct JsonEngines {
    jit: Option<f64>,
    interp: Option<f64>,
    reference: Option<f64>,
}

#[derive(serde::Serialize)]
struct JsonRoofline {
    read_gbps: Option<f64>,
    fma_gflops: Option<f64>,
    wide_tier: Option<&'static str>,
    wide_fma_gflops: Option<f64>,
    /// The wide tier's streaming read bandwidth.
    wide_read_gbps: Option<f64>,
    /// The rate streamed bytes are measured against: the larger read bandwidth.
    stream_gbps: Option<f64>,
}

/// A measurement as printed: four decimals (timer noise is far larger), `null` when
/// missing or not finite (JSON has no NaN or infinity).
fn json_num(v: Option<f64>) -> Option<f64> {
    v.filter(|x| x.is_finite()).map(|x| (x * 1e4).round() / 1e4)
}

fn tune_json(t: &crate::runtime::tune::Tuning) -> JsonTune {
    use crate::runtime::tune::Decided;
    JsonTune {
        ms: json_num(Some(t.ms)),
        layers: t
            .trials
            .iter()
            .map(|tr| JsonTrial {
                layers: tr.layers.clone(),
                chosen: tr.chosen.name(),
                decided: match tr.decided {
                    Decided::Measured => "measured",
                    Decided::Cached => "cached",
                    Decided::OutOfBudget => "out_of_budget",
                },
                candidates: tr.candidates.iter().map(|(p, _)| p.name()).collect(),
                ms: tr.ms.iter().map(|m| json_num(*m)).collect(),
            })
            .collect(),
    }
}

/// The report as one JSON line.
pub(super) fn report_json(r: &BenchReport) -> crate::Result<String> {
    use crate::Engine as E;
    let engines = |f: &dyn Fn(E) -> Option<f64>| JsonEngines {
        jit: json_num(f(E::Jit)),
        interp: json_num(f(E::Interp)),
        reference: json_num(f(E::Reference)),
    };
    let report = JsonReport {
        model: &r.model,
        batch: r.batch,
        threads: r.threads,
        params: r.params,
        weight_bytes: r.weight_bytes,
        weights_dtype: r.weights_dtype.name(),
        stored_weight_bytes: r.stored_weight_bytes,
        traffic_bytes: r.traffic_bytes,
        flops: JsonFlops {
            forward: r.forward_flops,
            train_step: r.train_flops,
        },
        compile_ms: JsonPasses {
            forward: json_num(r.compile_ms_forward),
            backward: json_num(r.compile_ms_backward),
        },
        forward_ms: engines(&|e| r.engine_ms(e)),
        train_step_ms: engines(&|e| r.train_engine_ms(e)),
        gbps: json_num(r.gbps()),
        gflops: json_num(r.gflops()),
        roofline: JsonRoofline {
            read_gbps: json_num(r.roofline.map(|r| r.read_gbps)),
            fma_gflops: json_num(r.roofline.map(|r| r.fma_gflops)),
            wide_tier: r.roofline.and_then(|r| r.wide).map(|w| w.tier.name()),
            wide_fma_gflops: json_num(r.roofline.and_then(|r| r.wide).map(|w| w.gflops)),
            wide_read_gbps: json_num(r.roofline.and_then(|r| r.wide).map(|w| w.read_gbps)),
            stream_gbps: json_num(r.roofline.map(|r| r.stream_gbps())),
        },
        tune: r.tuning.as_deref().map(tune_json),
    };
    // Plain numbers, strings and options always serialize: a failure is a bug.
    serde_json::to_string(&report)
        .map_err(|e| crate::Error::internal(format!("bench report as JSON: {e}")))
}
