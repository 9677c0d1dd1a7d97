//! The SIMD tier option of [`super::CompileOptions::wide`]: which tier past f32x4 the
//! schedules may use, parsed from the command line's and Python's names and resolved
//! against the host's CPU.
//!
//! Invariant: every choice computes the same bits; only a tier the CPU lacks is refused.

use crate::backend;
use crate::error::{Error, Result};
use crate::loop_ir::micro::Tier;

/// The choice of [`super::CompileOptions::wide`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum WideTier {
    /// The widest tier this CPU has (AVX-512F, else AVX2 with FMA), or none.
    #[default]
    Auto,
    /// f32x4 only.
    Off,
    /// This tier; a CPU without it is refused with a usage error.
    Only(Tier),
}

impl WideTier {
    /// Parses a name as `--wide` takes it: `auto`, `off`, `avx2` or `avx512`.
    pub fn parse(name: &str) -> Result<WideTier> {
        match name {
            "auto" => Ok(WideTier::Auto),
            "off" => Ok(WideTier::Off),
            "avx2" => Ok(WideTier::Only(Tier::Avx2)),
            "avx512" => Ok(WideTier::Only(Tier::Avx512)),
            other => Err(Error::Usage {
                detail: format!("wide must be 'auto', 'off', 'avx2' or 'avx512', not '{other}'"),
            }),
        }
    }

    /// The name [`WideTier::parse`] takes.
    pub fn name(self) -> &'static str {
        match self {
            WideTier::Auto => "auto",
            WideTier::Off => "off",
            WideTier::Only(t) => t.name(),
        }
    }

    /// The tier to schedule for on this CPU.
    pub fn resolve(self) -> Result<Option<Tier>> {
        self.choose(backend::host_has_tier).map_err(|t| Error::Usage {
            detail: format!("the wide tier asked for (--wide, CompileOptions::wide) is {t}, which this CPU lacks"),
        })
    }

    /// The tier to schedule for on a machine that has the tiers `has` accepts: `Auto`
    /// the widest of them, or none; `Err(t)` when `Only(t)` asks for one it lacks.
    pub fn choose(self, has: impl Fn(Tier) -> bool) -> std::result::Result<Option<Tier>, Tier> {
        match self {
            WideTier::Off => Ok(None),
            WideTier::Auto => Ok([Tier::Avx512, Tier::Avx2].into_iter().find(|t| has(*t))),
            WideTier::Only(t) if has(t) => Ok(Some(t)),
            WideTier::Only(t) => Err(t),
        }
    }
}
