//! Learning rates: constants and tf-keras 2.21 schedules
//! (`tf_keras/optimizers/schedules/learning_rate_schedule.py`), evaluated at the
//! optimizer's `iterations` count before the update (0 on the first step), in float32.

use crate::error::{Error, Result};
use serde_json::Value;

/// A learning rate: a constant or a schedule of the step.
#[derive(Clone, Debug, PartialEq)]
pub enum LearningRate {
    /// A fixed rate.
    Constant(f32),
    /// `lr0 · rate^(step/decay_steps)` (floored exponent when `staircase`).
    ExponentialDecay {
        /// Initial rate.
        initial_learning_rate: f32,
        /// Steps per decay period.
        decay_steps: f32,
        /// Decay factor per period.
        decay_rate: f32,
        /// Whether the exponent is floored.
        staircase: bool,
    },
    /// `values[0]` while `step ≤ boundaries[0]`, … , `values[n]` after `boundaries[n−1]`.
    PiecewiseConstantDecay {
        /// Step boundaries, increasing.
        boundaries: Vec<f64>,
        /// One more value than boundaries.
        values: Vec<f32>,
    },
    /// `lr0 / (1 + rate · step/decay_steps)` (floored ratio when `staircase`).
    InverseTimeDecay {
        /// Initial rate.
        initial_learning_rate: f32,
        /// Steps per decay period.
        decay_steps: f32,
        /// Decay rate.
        decay_rate: f32,
        /// Whether the ratio is floored.
        staircase: bool,
    },
    /// Cosine decay to `alpha·lr` over `decay_steps`, after an optional linear warm-up
    /// from `initial_learning_rate` to `warmup_target` over `warmup_steps`.
    CosineDecay {
        /// Initial rate.
        initial_learning_rate: f32,
        /// Length of the decay.
        decay_steps: f32,
        /// Final fraction of the rate.
        alpha: f32,
        /// Rate reached by the warm-up, if any.
        warmup_target: Option<f32>,
        /// Length of the warm-up.
        warmup_steps: f32,
    },
    /// `(lr0 − end)·(1 − step/decay_steps)^power + end` (no `cycle`).
    PolynomialDecay {
        /// Initial rate.
        initial_learning_rate: f32,
        /// Length of the decay.
        decay_steps: f32,
        /// Final rate.
        end_learning_rate: f32,
        /// Exponent.
        power: f32,
        /// Whether the decay restarts with a longer period.
        cycle: bool,
    },
}

impl LearningRate {
    /// The rate at optimizer step `step` (0-based count of updates already applied).
    pub fn at(&self, step: u64) -> f32 {
        let s = step as f32;
        match self {
            LearningRate::Constant(lr) => *lr,
            LearningRate::ExponentialDecay {
                initial_learning_rate,
                decay_steps,
                decay_rate,
                staircase,
            } => {
                let mut p = s / decay_steps;
                if *staircase {
                    p = p.floor();
                }
                initial_learning_rate * decay_rate.powf(p)
            }
            LearningRate::PiecewiseConstantDecay { boundaries, values } => {
                let x = step as f64;
                let i = boundaries.iter().take_while(|&&b| x > b).count();
                values.get(i).or(values.last()).copied().unwrap_or(0.0)
            }
            LearningRate::InverseTimeDecay {
                initial_learning_rate,
                decay_steps,
                decay_rate,
                staircase,
            } => {
                let mut p = s / decay_steps;
                if *staircase {
                    p = p.floor();
                }
                initial_learning_rate / (1.0 + decay_rate * p)
            }
            LearningRate::CosineDecay {
                initial_learning_rate,
                decay_steps,
                alpha,
                warmup_target,
                warmup_steps,
            } => {
                let decay = |step: f32, from: f32| {
                    let frac = step / decay_steps;
                    let c = 0.5 * (1.0 + (std::f32::consts::PI * frac).cos());
                    from * ((1.0 - alpha) * c + alpha)
                };
                match warmup_target {
                    None => decay(s.min(*decay_steps), *initial_learning_rate),
                    Some(target) => {
                        let g = s.min(decay_steps + warmup_steps);
                        if g < *warmup_steps {
                            (target - initial_learning_rate) * (g / warmup_steps)
                                + initial_learning_rate
                        } else {
                            decay(g - warmup_steps, *target)
                        }
                    }
                }
            }
            LearningRate::PolynomialDecay {
                initial_learning_rate,
                decay_steps,
                end_learning_rate,
                power,
                cycle,
            } => {
                let (g, d) = if *cycle {
                    let m = if s == 0.0 {
                        1.0
                    } else {
                        (s / decay_steps).ceil()
                    };
                    (s, decay_steps * m)
                } else {
                    (s.min(*decay_steps), *decay_steps)
                };
                (initial_learning_rate - end_learning_rate) * (1.0 - g / d).powf(*power)
                    + end_learning_rate
            }
        }
    }

    /// Parses a serialized learning rate: a number, a numeric string, or a schedule
    /// object `{"class_name": …, "config": {…}}` (with or without `module`).
    pub fn from_json(v: &Value, source: &str) -> Result<LearningRate> {
        if let Some(x) = v.as_f64() {
            return Ok(LearningRate::Constant(x as f32));
        }
        if let Some(x) = v.as_str().and_then(|s| s.trim().parse::<f64>().ok()) {
            return Ok(LearningRate::Constant(x as f32));
        }
        let err = |d: String| Error::Config {
            source_name: source.to_string(),
            detail: format!("field 'learning_rate': {d}"),
        };
        let class = v
            .get("class_name")
            .and_then(Value::as_str)
            .ok_or_else(|| err(format!("expected a number or a schedule, found {v}")))?;
        let c = v.get("config").unwrap_or(&Value::Null);
        let num = |k: &str, default: Option<f64>| -> Result<f32> {
            match c.get(k) {
                Some(x) if x.is_number() => Ok(x.as_f64().unwrap_or(0.0) as f32),
                None | Some(Value::Null) => default
                    .map(|d| d as f32)
                    .ok_or_else(|| err(format!("{class}: missing '{k}'"))),
                Some(x) => Err(err(format!("{class}: '{k}' is not a number: {x}"))),
            }
        };
        let flag = |k: &str| c.get(k).and_then(Value::as_bool).unwrap_or(false);
        let class = class.rsplit('>').next().unwrap_or(class);
        Ok(match class {
            "ExponentialDecay" => LearningRate::ExponentialDecay {
                initial_learning_rate: num("initial_learning_rate", None)?,
                decay_steps: num("decay_steps", None)?,
                decay_rate: num("decay_rate", None)?,
                staircase: flag("staircase"),
            },
            "InverseTimeDecay" => LearningRate::InverseTimeDecay {
                initial_learning_rate: num("initial_learning_rate", None)?,
                decay_steps: num("decay_steps", None)?,
                decay_rate: num("decay_rate", None)?,
                staircase: flag("staircase"),
            },
            "CosineDecay" => LearningRate::CosineDecay {
                initial_learning_rate: num("initial_learning_rate", None)?,
                decay_steps: num("decay_steps", None)?,
                alpha: num("alpha", Some(0.0))?,
                warmup_target: match c.get("warmup_target") {
                    None | Some(Value::Null) => None,
                    Some(_) => Some(num("warmup_target", None)?),
                },
                warmup_steps: num("warmup_steps", Some(0.0))?,
            },
            "PolynomialDecay" => LearningRate::PolynomialDecay {
                initial_learning_rate: num("initial_learning_rate", None)?,
                decay_steps: num("decay_steps", None)?,
                end_learning_rate: num("end_learning_rate", Some(1e-4))?,
                power: num("power", Some(1.0))?,
                cycle: flag("cycle"),
            },
            "PiecewiseConstantDecay" => {
                let list = |k: &str| -> Result<Vec<f64>> {
                    c.get(k)
                        .and_then(Value::as_array)
                        .ok_or_else(|| err(format!("{class}: missing list '{k}'")))?
                        .iter()
                        .map(|x| {
                            x.as_f64()
                                .ok_or_else(|| err(format!("{class}: '{k}' holds {x}")))
                        })
                        .collect()
                };
                let boundaries = list("boundaries")?;
                let values: Vec<f32> = list("values")?.into_iter().map(|x| x as f32).collect();
                if values.len() != boundaries.len() + 1 {
                    return Err(err(format!(
                        "{class}: {} values for {} boundaries (need one more)",
                        values.len(),
                        boundaries.len()
                    )));
                }
                LearningRate::PiecewiseConstantDecay { boundaries, values }
            }
            other => return Err(err(format!("unknown learning-rate schedule '{other}'"))),
        })
    }
}
