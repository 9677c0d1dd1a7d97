//! Keras's progress display (`tf_keras/utils/generic_utils.py` `Progbar`, driven as
//! `ProgbarLogger` drives it in `fit`), on stderr.
//!
//! On a terminal (Keras's `verbose=1`): a bar redrawn in place at most every 50 ms,
//! `12/50 [======>.......................] - ETA: 3s - loss: 0.2170 - mae: 0.4100`,
//! finished at the end of the epoch as
//! `50/50 [==============================] - 1s 20ms/step - loss: … - val_loss: …`.
//! Elsewhere (`verbose=2`): one line per epoch,
//! `50/50 - 1s - loss: … - val_loss: … - 1s/epoch - 20ms/step`. Values print with four
//! decimals, or as `1.2340e-05` when small (Keras's rule, including its quirk that the
//! one-line form tests `v > 1e-3` rather than `|v| > 1e-3`). The step time ignores the
//! first step once there are more (Keras's estimate).

use super::Logs;
use std::time::{Duration, Instant};

/// Minimum time between two redraws of the bar.
const INTERVAL: Duration = Duration::from_millis(50);

/// One epoch's progress display.
pub(crate) struct Progbar {
    target: usize,
    dynamic: bool,
    start: Instant,
    last_update: Option<Instant>,
    total_width: usize,
    after_first_step: Option<Instant>,
}

impl Progbar {
    /// A display for `target` steps; `dynamic`: redraw a bar (a terminal), else print one
    /// line at the end.
    pub fn new(target: usize, dynamic: bool) -> Self {
        Progbar {
            target: target.max(1),
            dynamic,
            start: Instant::now(),
            last_update: None,
            total_width: 0,
            after_first_step: None,
        }
    }

    /// The text to print for step `current` (1-based) with `logs`, or `None` when
    /// nothing is due (throttled, or the one-line form before the end).
    pub fn update(&mut self, current: usize, logs: &Logs, finalize: bool) -> Option<String> {
        let now = Instant::now();
        let per_step = self.step_duration(current, now);
        let elapsed = (now - self.start).as_secs_f64();
        if !self.dynamic {
            if !finalize {
                return None;
            }
            let mut line = format!("{} - {elapsed:.0}s", count(current, self.target));
            for (k, v) in logs.iter() {
                line += &format!(" - {k}: {}", if v > 1e-3 { fixed4(v) } else { sci4(v) });
            }
            let epoch = elapsed;
            line += &format!(" -{}", format_time(epoch, "epoch"));
            line += &format!(" -{}", format_time(epoch / self.target as f64, "step"));
            line.push('\n');
            return Some(line);
        }
        if !finalize && self.last_update.is_some_and(|t| now - t < INTERVAL) {
            return None;
        }
        self.last_update = Some(now);
        let bar = bar(current, self.target, 30);
        let mut info = if finalize {
            format!(" - {elapsed:.0}s{}", format_time(per_step, "step"))
        } else {
            format!(
                " - ETA: {}",
                eta(per_step * (self.target.saturating_sub(current)) as f64)
            )
        };
        for (k, v) in logs.iter() {
            info += &format!(" - {k}: {}", value4(v));
        }
        let prev = self.total_width;
        self.total_width = bar.chars().count() + info.chars().count();
        // Blank out what a longer previous line left behind.
        let pad = " ".repeat(prev.saturating_sub(self.total_width));
        Some(format!(
            "\r{bar}{info}{pad}{}",
            if finalize { "\n" } else { "" }
        ))
    }

    /// Keras's `_estimate_step_duration`: seconds per step, ignoring the first step
    /// once more have run.
    fn step_duration(&mut self, current: usize, now: Instant) -> f64 {
        if current == 0 {
            return 0.0;
        }
        let per = match self.after_first_step {
            Some(t) if current > 1 => (now - t).as_secs_f64() / (current - 1) as f64,
            _ => (now - self.start).as_secs_f64() / current as f64,
        };
        if current == 1 {
            self.after_first_step = Some(now);
        }
        per
    }
}

/// `current/target` with `current` right-aligned to the width of `target`.
fn count(current: usize, target: usize) -> String {
    let digits = target.to_string().len();
    format!("{current:>digits$}/{target}")
}

/// `12/50 [=====>....]` with a bar `width` characters wide.
pub(crate) fn bar(current: usize, target: usize, width: usize) -> String {
    let mut s = format!("{} [", count(current, target));
    let filled = ((width as f64) * current as f64 / target.max(1) as f64) as usize;
    let filled = filled.min(width);
    if filled > 0 {
        s += &"=".repeat(filled - 1);
        s.push(if current < target { '>' } else { '=' });
    }
    s += &".".repeat(width - filled);
    s.push(']');
    s
}

/// Keras's ETA text: `h:mm:ss` past an hour, `m:ss` past a minute, else `Ns`.
pub(crate) fn eta(secs: f64) -> String {
    let s = secs.max(0.0);
    if s > 3600.0 {
        format!(
            "{}:{:02}:{:02}",
            (s / 3600.0) as u64,
            ((s % 3600.0) / 60.0) as u64,
            (s % 60.0) as u64
        )
    } else if s > 60.0 {
        format!("{}:{:02}", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!("{}s", s as u64)
    }
}

/// Keras's `_format_time`: ` 1s/unit`, ` 20ms/unit` or ` 300us/unit`.
pub(crate) fn format_time(t: f64, unit: &str) -> String {
    if t >= 1.0 || t == 0.0 {
        format!(" {t:.0}s/{unit}")
    } else if t >= 1e-3 {
        format!(" {:.0}ms/{unit}", t * 1e3)
    } else {
        format!(" {:.0}us/{unit}", t * 1e6)
    }
}

/// A value on the bar: four decimals, or `1.2340e-05` when `|v| ≤ 1e-3`.
pub(crate) fn value4(v: f64) -> String {
    if v.abs() > 1e-3 {
        fixed4(v)
    } else {
        sci4(v)
    }
}

fn fixed4(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.4}")
    } else {
        super::format::python_float(v)
    }
}

fn sci4(v: f64) -> String {
    if !v.is_finite() {
        return super::format::python_float(v);
    }
    let s = format!("{v:.4e}");
    let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
    let e: i32 = e.parse().unwrap_or(0);
    format!("{m}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_as_keras_draws_it() {
        assert_eq!(bar(12, 50, 30), "12/50 [======>.......................]");
        assert_eq!(bar(50, 50, 30), "50/50 [==============================]");
        assert_eq!(bar(1, 50, 30), " 1/50 [..............................]");
        assert_eq!(bar(2, 50, 30), " 2/50 [>.............................]");
        assert_eq!(bar(3, 3, 10), "3/3 [==========]");
    }

    #[test]
    fn numbers_as_keras_prints_them() {
        assert_eq!(value4(0.217), "0.2170");
        assert_eq!(value4(-0.5), "-0.5000");
        assert_eq!(value4(1.234e-5), "1.2340e-05");
        assert_eq!(value4(f64::NAN), "nan");
        assert_eq!(eta(3.7), "3s");
        assert_eq!(eta(75.0), "1:15");
        assert_eq!(eta(3725.0), "1:02:05");
        assert_eq!(format_time(0.02, "step"), " 20ms/step");
        assert_eq!(format_time(1.4, "epoch"), " 1s/epoch");
        assert_eq!(format_time(0.0003, "step"), " 300us/step");
        assert_eq!(format_time(0.0, "step"), " 0s/step");
    }

    #[test]
    fn lines_have_keras_layout() {
        let mut logs = Logs::new();
        logs.set("loss", 0.25);
        logs.set("val_loss", 0.5);
        let mut p = Progbar::new(5, false);
        assert!(p.update(3, &logs, false).is_none());
        let line = p.update(5, &logs, true).expect("final line");
        assert!(
            line.starts_with("5/5 - 0s - loss: 0.2500 - val_loss: 0.5000 - "),
            "{line}"
        );
        assert!(
            line.contains("/epoch - ") && line.ends_with("s/step\n"),
            "{line}"
        );
        let mut p = Progbar::new(5, true);
        let first = p.update(1, &logs, false).expect("first draw");
        assert!(
            first.starts_with("\r1/5 [=====>........................] - ETA: 0s - loss: 0.2500"),
            "{first}"
        );
        let last = p.update(5, &logs, true).expect("final");
        assert!(
            last.starts_with("\r5/5 [==============================] - 0s "),
            "{last}"
        );
        assert!(
            last.ends_with("/step - loss: 0.2500 - val_loss: 0.5000\n"),
            "{last}"
        );
    }
}
