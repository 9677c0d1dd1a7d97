//! What `lcjit bench` reports for one model ([`BenchReport`]): the measurements, the
//! figures derived from them against the roofline, and the human-readable table (the
//! JSON line is in `json.rs`).

use super::Roofline;

/// What `lcjit bench` measured for one model.
#[derive(Clone, Debug)]
pub struct BenchReport {
    /// Model name (file stem).
    pub model: String,
    /// Batch size.
    pub batch: usize,
    /// Threads.
    pub threads: usize,
    /// Parameter count (Keras's).
    pub params: usize,
    /// Bytes of weights (f32).
    pub weight_bytes: u64,
    /// How LC and Dense kernels were stored for the forward pass.
    pub weights_dtype: crate::loop_ir::Dtype,
    /// Bytes of weights as stored for the forward pass (`weight_bytes` for f32).
    pub stored_weight_bytes: u64,
    /// Bytes a forward pass moves at least: weights, inputs read once, every layer's
    /// output written and read once (see [`super::traffic_bytes`]).
    pub traffic_bytes: u64,
    /// Forward flops per batch.
    pub forward_flops: u64,
    /// JIT compile time of the forward program (lowering + codegen), ms.
    pub compile_ms_forward: Option<f64>,
    /// With autotuning: what it chose and measured (see [`crate::runtime::tune`]).
    pub tuning: Option<std::sync::Arc<crate::runtime::tune::Tuning>>,
    /// Median forward times per engine, ms: (engine, ms).
    pub forward_ms: Vec<(crate::Engine, f64)>,
    /// Flops of one training step (forward, and `dx` and `dW` of every layer: 3× the
    /// forward), when training was timed.
    pub train_flops: Option<u64>,
    /// JIT compile time of the training programs (gradient program and update), ms.
    pub compile_ms_backward: Option<f64>,
    /// Median training-step times per engine (forward, backward, Adam update), ms.
    pub train_ms: Vec<(crate::Engine, f64)>,
    /// The machine's measured limits.
    pub roofline: Option<Roofline>,
}

impl BenchReport {
    pub(super) fn engine_ms(&self, e: crate::Engine) -> Option<f64> {
        self.forward_ms.iter().find(|(x, _)| *x == e).map(|x| x.1)
    }

    pub(super) fn train_engine_ms(&self, e: crate::Engine) -> Option<f64> {
        self.train_ms.iter().find(|(x, _)| *x == e).map(|x| x.1)
    }

    /// Achieved weight-streaming bandwidth of the JIT forward pass, GB/s.
    pub fn gbps(&self) -> Option<f64> {
        self.engine_ms(crate::Engine::Jit)
            .map(|ms| self.weight_bytes as f64 / (ms * 1e-3) / 1e9)
    }

    /// Achieved GFLOP/s of the JIT forward pass.
    pub fn gflops(&self) -> Option<f64> {
        self.engine_ms(crate::Engine::Jit)
            .map(|ms| self.forward_flops as f64 / (ms * 1e-3) / 1e9)
    }

    /// One JSON line with the fields of the `lcjit bench --json` contract.
    pub fn json(&self) -> crate::Result<String> {
        super::json::report_json(self)
    }

    /// A human-readable table, with the JIT compared to the other engines and to the
    /// roofline bounds.
    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "model {}  batch {}  threads {}  params {}  weights {:.1} MB  forward {:.3} GFLOP",
            self.model,
            self.batch,
            self.threads,
            crate::graph::print::with_commas(self.params),
            self.weight_bytes as f64 / 1e6,
            self.forward_flops as f64 / 1e9
        );
        if self.weights_dtype != crate::loop_ir::Dtype::F32 {
            let _ = writeln!(
                s,
                "forward with LC and Dense kernels in {}: weights stored in {:.1} MB",
                self.weights_dtype.name(),
                self.stored_weight_bytes as f64 / 1e6
            );
        }
        if let Some(c) = self.compile_ms_forward {
            let _ = writeln!(s, "compile (forward, lower + codegen): {c:.1} ms");
        }
        if let Some(t) = &self.tuning {
            s.push_str(&tuning_table(t));
        }
        let jit = self.engine_ms(crate::Engine::Jit);
        let _ = writeln!(s, "{:<10} {:>12} {:>10}", "engine", "median ms", "vs jit");
        for (e, ms) in &self.forward_ms {
            let ratio = jit.map(|j| format!("{:.1}x", ms / j)).unwrap_or_default();
            let _ = writeln!(s, "{:<10} {:>12.3} {:>10}", e.name(), ms, ratio);
        }
        if !self.train_ms.is_empty() {
            if let Some(c) = self.compile_ms_backward {
                let _ = writeln!(s, "compile (gradient program + update): {c:.1} ms");
            }
            let jt = self.train_engine_ms(crate::Engine::Jit);
            let _ = writeln!(
                s,
                "{:<10} {:>12} {:>10}",
                "train step", "median ms", "vs jit"
            );
            for (e, ms) in &self.train_ms {
                let ratio = jt.map(|j| format!("{:.1}x", ms / j)).unwrap_or_default();
                let _ = writeln!(s, "{:<10} {:>12.3} {:>10}", e.name(), ms, ratio);
            }
            if let (Some(r), Some(j), Some(f)) = (self.roofline, jt, self.train_flops) {
                let bound = f as f64 / (r.fma_gflops * 1e9) * 1e3;
                let _ = writeln!(
                    s,
                    "jit train step: {:.1} GFLOP/s, {:.2}x the FMA bound ({bound:.2} ms for {:.3} GFLOP)",
                    f as f64 / (j * 1e-3) / 1e9,
                    j / bound,
                    f as f64 / 1e9
                );
                if let Some(w) = r.wide {
                    let wide = f as f64 / (w.gflops * 1e9) * 1e3;
                    let _ = writeln!(
                        s,
                        "jit train step: {:.0}% of the {} FMA rate (bound {wide:.2} ms)",
                        100.0 * wide / j,
                        w.tier
                    );
                }
            }
        }
        if let Some(r) = self.roofline {
            let (wide_read, wide) = r
                .wide
                .map(|w| {
                    (
                        format!(" ({} loads {:.1})", w.tier, w.read_gbps),
                        format!(", {} FMA {:.1} GFLOP/s", w.tier, w.gflops),
                    )
                })
                .unwrap_or_default();
            let _ = writeln!(
                s,
                "roofline: read {:.1} GB/s{wide_read}, f32x4 FMA {:.1} GFLOP/s{wide}",
                r.read_gbps, r.fma_gflops
            );
            // Bytes stream at the fastest rate measured (the wide tier's loads where the
            // CPU has one): the bound of what any code could do here.
            let read = r.stream_gbps();
            let stream_ms = self.weight_bytes as f64 / (read * 1e9) * 1e3;
            let fma_ms = self.forward_flops as f64 / (r.fma_gflops * 1e9) * 1e3;
            if let Some(j) = jit {
                let _ = writeln!(
                    s,
                    "jit: {:.1} GB/s of f32 weights ({:.2}x the time to stream them once, {stream_ms:.2} ms), \
{:.1} GFLOP/s ({:.0}% of the FMA rate; bound {fma_ms:.2} ms)",
                    self.gbps().unwrap_or(0.0),
                    j / stream_ms,
                    self.gflops().unwrap_or(0.0),
                    100.0 * fma_ms / j
                );
                let traffic_ms = self.traffic_bytes as f64 / (read * 1e9) * 1e3;
                let _ = writeln!(
                    s,
                    "jit forward: {:.2}x the traffic bound (weights, inputs once, each layer's output \
written and read once: {:.1} MB, {traffic_ms:.2} ms)",
                    j / traffic_ms,
                    self.traffic_bytes as f64 / 1e6
                );
                if let Some(w) = r.wide {
                    let wide_ms = self.forward_flops as f64 / (w.gflops * 1e9) * 1e3;
                    let _ = writeln!(
                        s,
                        "jit forward: {:.2}x the f32x4 FMA bound, {:.0}% of the {} FMA rate (bound {wide_ms:.2} ms)",
                        j / fma_ms,
                        100.0 * wide_ms / j,
                        w.tier
                    );
                }
            }
        }
        s
    }
}

/// The autotuning lines of the table: per layer key, its layers, each candidate's best
/// time and the family chosen.
fn tuning_table(t: &crate::runtime::tune::Tuning) -> String {
    use crate::runtime::tune::Decided;
    use std::fmt::Write as _;
    let mut s = String::new();
    let timed = t
        .trials
        .iter()
        .filter(|t| t.decided == Decided::Measured)
        .count();
    let _ = writeln!(
        s,
        "autotune: {} layer shapes with a choice, {timed} timed in {:.0} ms",
        t.trials.len(),
        t.ms
    );
    for tr in &t.trials {
        let how = match tr.decided {
            Decided::Measured => "measured",
            Decided::Cached => "cached",
            Decided::OutOfBudget => "out of budget: default",
        };
        let _ = writeln!(s, "  {}: {} ({how})", tr.layers.join(", "), tr.chosen);
        for ((plan, text), ms) in tr.candidates.iter().zip(&tr.ms) {
            let ms = ms.map_or("-".to_string(), |m| format!("{m:.3} ms"));
            let _ = writeln!(s, "    {:<13} {ms:>12}  {text}", plan.name());
        }
    }
    s
}
