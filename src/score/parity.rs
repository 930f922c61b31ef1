//! How far two models' outputs are apart: the export parity and golden
//! checks.

use crate::model::reference::Outputs;

/// How far `got` is from `expected` for one value of `output`: absolute for
/// probabilities; spend is in minor units (up to millions), where float32
/// rounding alone exceeds any useful absolute tolerance, so it is compared
/// relative to max(1, |expected|), and so are explanation contributions.
pub fn difference(output: &str, expected: f32, got: f32) -> f32 {
    let d = (expected - got).abs();
    // Contributions are logit parts, unbounded like spend.
    if output == "predicted_spend" || output == crate::model::SEGMENT_CONTRIBUTIONS {
        d / expected.abs().max(1.0)
    } else {
        d
    }
}

/// Each output of `expected` with the same output of `got` (empty when
/// `got` lacks it): an explanation output the expected side has must be
/// given; one only `got` has is not compared.
pub(super) fn paired<'a>(
    expected: &'a Outputs,
    got: &'a Outputs,
) -> Vec<(&'static str, &'a [f32], &'a [f32])> {
    let theirs = got.named();
    expected
        .named()
        .into_iter()
        .map(|(name, a)| {
            let b = theirs
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(&[][..], |(_, b)| *b);
            (name, a, b)
        })
        .collect()
}

/// The largest [`difference`] between two models' outputs and the output it
/// is on; infinite when a value is not finite or the shapes differ.
pub fn max_difference(expected: &Outputs, got: &Outputs) -> (f32, &'static str) {
    let mut worst = (0f32, "none");
    for (name, a, b) in paired(expected, got) {
        if a.len() != b.len() {
            return (f32::INFINITY, name);
        }
        for (x, y) in a.iter().zip(b) {
            let d = difference(name, *x, *y);
            if d.is_nan() || d > worst.0 {
                worst = (if d.is_nan() { f32::INFINITY } else { d }, name);
            }
        }
    }
    worst
}

/// Why a model's outputs on its golden inputs are not its golden outputs.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(super) enum ParityError {
    /// An output is NaN or infinite.
    #[error("{name}[{index}] is {value} for the golden inputs")]
    NotFinite {
        name: &'static str,
        index: usize,
        value: f32,
    },
    /// An output has another length than the golden one.
    #[error("{name} has {got} values, the manifest's golden output {expected}")]
    Length {
        name: &'static str,
        got: usize,
        expected: usize,
    },
    /// An output is further from the golden one than the tolerance.
    #[error("{name}[{index}] is {got}, the golden output is {expected} (difference {difference:e} > tolerance {tolerance:e})")]
    Beyond {
        name: &'static str,
        index: usize,
        got: f32,
        expected: f32,
        difference: f32,
        tolerance: f32,
    },
}

pub(super) fn compare(
    expected: &Outputs,
    got: &Outputs,
    tolerance: f32,
) -> Result<f32, ParityError> {
    let mut worst = 0f32;
    for (name, a, b) in paired(expected, got) {
        if let Some(i) = b.iter().position(|v| !v.is_finite()) {
            return Err(ParityError::NotFinite {
                name,
                index: i,
                value: b[i],
            });
        }
        if a.len() != b.len() {
            return Err(ParityError::Length {
                name,
                got: b.len(),
                expected: a.len(),
            });
        }
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            let d = difference(name, *x, *y);
            worst = worst.max(d);
            if d > tolerance {
                return Err(ParityError::Beyond {
                    name,
                    index: i,
                    got: *y,
                    expected: *x,
                    difference: d,
                    tolerance,
                });
            }
        }
    }
    Ok(worst)
}
