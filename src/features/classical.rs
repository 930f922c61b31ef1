//! Classical customer-base inputs (feature version 4): what a BG/NBD model
//! (Fader, Hardie and Lee 2005, "Counting your customers the easy way")
//! and a Gamma-Gamma spend model (Fader, Hardie and Lee 2005, "RFM and
//! CLV") know about a customer, given to the learned models as inputs.
//!
//! The parameters are fitted by the trainer on its training examples
//! (`train::btyd`) and stored in the model's [`FeatureSpec`] (`classical`),
//! so that serving computes, with this code, from the same lifetime
//! features and the same parameters, the numbers the model was trained on.
//! A spec without parameters (the rules model, a trainer before its fit)
//! marks the inputs "not defined" (-1).
//!
//! The inputs, after the lifetime purchase features:
//! - `bgnbd_p_alive`: probability the customer is still alive at the cut;
//! - `bgnbd_p_purchase`: probability of a purchase within the horizon;
//! - `bgnbd_expected_purchases`: expected purchases within the horizon
//!   (log-scaled as counts);
//! - `expected_spend`: expected purchases times the Gamma-Gamma expected
//!   order value (the customer's mean shrunk toward the population's; the
//!   customer's own mean where Gamma-Gamma could not be fitted), log-scaled
//!   as spend.
//!
//! Customers who never purchased are outside both models: -1.

use serde::{Deserialize, Serialize};

use super::{Normalization, CLASSICAL_AT, CLASSICAL_DIM, LIFETIME_AT};

/// BG/NBD parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BgNbd {
    /// Shape of the purchase-rate Gamma.
    pub r: f64,
    /// Rate (scale⁻¹) of the purchase-rate Gamma, in days.
    pub alpha: f64,
    /// Beta parameter a of the dropout probability.
    pub a: f64,
    /// Beta parameter b of the dropout probability.
    pub b: f64,
}

/// Gamma-Gamma parameters: order values ~ Gamma(p, ν) per customer, with
/// ν ~ Gamma(q, γ) across customers (q > 1, so the mean is finite).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GammaGamma {
    /// Shape of a customer's order values.
    pub p: f64,
    /// Shape of the rate's Gamma across customers.
    pub q: f64,
    /// Rate of the rate's Gamma across customers, in minor units.
    pub gamma: f64,
}

/// One customer's summary, in days.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rfm {
    /// Repeat purchases (purchases − 1).
    pub x: f64,
    /// First to last purchase.
    pub t_x: f64,
    /// First purchase to the cut.
    pub t: f64,
}

/// The fitted parameters the classical inputs are computed with; stored in
/// the model's feature spec.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Classical {
    /// Purchases and dropout.
    pub bgnbd: BgNbd,
    /// Order values (None where it could not be fitted).
    pub gamma_gamma: Option<GammaGamma>,
    /// The horizon the probabilities and expectations are for, in days.
    pub horizon_days: f64,
    /// Purchase rate in the horizon of the training customers who had never
    /// purchased: the baseline's prediction for them (BG/NBD starts at the
    /// first purchase). 0 in manifests written before it was kept.
    #[serde(default)]
    pub never_rate: f64,
}

impl BgNbd {
    /// Probability that the customer is still alive at T.
    pub fn p_alive(&self, c: &Rfm) -> f64 {
        if c.x <= 0.0 {
            return 1.0;
        }
        let BgNbd { r, alpha, a, b } = *self;
        let odds = (a / (b + c.x - 1.0)) * ((alpha + c.t) / (alpha + c.t_x)).powf(r + c.x);
        1.0 / (1.0 + odds)
    }

    /// Probability of at least one purchase in (T, T + h]: alive, and the
    /// Poisson process (rate posterior Gamma(r + x, α + T)) fires.
    pub fn p_purchase_within(&self, c: &Rfm, h: f64) -> f64 {
        let shape = self.r + c.x;
        let none = ((self.alpha + c.t) / (self.alpha + c.t + h)).powf(shape);
        self.p_alive(c) * (1.0 - none)
    }

    /// Expected purchases in (T, T + h] (Fader, Hardie and Lee, eq. 10).
    pub fn expected_purchases(&self, c: &Rfm, h: f64) -> f64 {
        let BgNbd { r, alpha, a, b } = *self;
        // The closed form has a pole at a = 1 (its limit is finite).
        let a = if (a - 1.0).abs() < 1e-6 {
            1.0 + 1e-6
        } else {
            a
        };
        let x = c.x;
        let z = h / (alpha + c.t + h);
        let f = hyp2f1(r + x, b + x, a + b + x - 1.0, z);
        let num = (a + b + x - 1.0) / (a - 1.0)
            * (1.0 - ((alpha + c.t) / (alpha + c.t + h)).powf(r + x) * f);
        let den = if x > 0.0 {
            1.0 + (a / (b + x - 1.0)) * ((alpha + c.t) / (alpha + c.t_x)).powf(r + x)
        } else {
            1.0
        };
        (num / den).max(0.0)
    }
}

impl GammaGamma {
    /// Expected order value of a customer with `n` purchases of mean value
    /// `mean`: a weighted mean of the population's and the customer's.
    pub fn expected_value(&self, n: f64, mean: f64) -> f64 {
        let GammaGamma { p, q, gamma } = *self;
        (gamma + mean * n) * p / (p * n + q - 1.0)
    }
}

impl Rfm {
    /// x, t_x and T read back from an encoded customer-feature row (the
    /// featurizer's lifetime features), with the number of purchases and
    /// their mean value in minor units; None for a customer who never
    /// purchased.
    pub fn of(norm: &Normalization, row: &[f32]) -> Option<(Rfm, f64, f64)> {
        let lt = &row[LIFETIME_AT..LIFETIME_AT + super::LIFETIME_DIM];
        let purchases = (f64::from(lt[0] * norm.count_log_scale)).exp_m1().round();
        if purchases < 1.0 || lt[3] < 0.0 {
            return None;
        }
        let days = |v: f32| f64::from(v * norm.days_log_scale).exp_m1().max(0.0);
        let t = days(lt[3]);
        let mean_value = f64::from(lt[2] * norm.amount_log_scale).exp_m1().max(0.0);
        Some((
            Rfm {
                x: purchases - 1.0,
                t_x: days(lt[4]).min(t),
                t,
            },
            purchases,
            mean_value,
        ))
    }
}

/// What the classical models predict for one customer within the horizon.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    /// Probability the customer is alive at the cut.
    pub p_alive: f64,
    /// Probability of at least one purchase.
    pub p_purchase: f64,
    /// Expected purchases.
    pub purchases: f64,
    /// Expected spend, minor units.
    pub spend: f64,
}

impl Classical {
    /// The classical prediction for the customer of `row`; None for a
    /// customer who never purchased.
    pub fn predict(&self, norm: &Normalization, row: &[f32]) -> Option<Prediction> {
        let (c, n, mean) = Rfm::of(norm, row)?;
        let h = self.horizon_days;
        let purchases = self.bgnbd.expected_purchases(&c, h);
        let value = self.gamma_gamma.map_or(mean, |g| g.expected_value(n, mean));
        Some(Prediction {
            p_alive: self.bgnbd.p_alive(&c),
            p_purchase: self.bgnbd.p_purchase_within(&c, h),
            purchases,
            spend: purchases * value,
        })
    }

    /// Why these parameters cannot be used, if they cannot.
    pub fn problems(&self) -> Vec<String> {
        let BgNbd { r, alpha, a, b } = self.bgnbd;
        let mut why = Vec::new();
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if ![r, alpha, a, b, self.horizon_days]
            .into_iter()
            .all(positive)
        {
            why.push(
                "classical: BG/NBD parameters and horizon_days must be positive numbers".into(),
            );
        }
        if let Some(g) = self.gamma_gamma {
            if !(positive(g.p) && positive(g.gamma) && g.q.is_finite() && g.q > 1.0) {
                why.push(
                    "classical: Gamma-Gamma p and gamma must be positive and q above 1".into(),
                );
            }
        }
        why
    }
}

/// Writes the classical inputs of one customer-feature row whose lifetime
/// features are already written; -1 ("not defined") without parameters or
/// for a customer who never purchased.
pub fn fill(classical: Option<&Classical>, norm: &Normalization, row: &mut [f32]) {
    let out = match classical.and_then(|c| c.predict(norm, row)) {
        Some(p) => [
            p.p_alive as f32,
            p.p_purchase as f32,
            (p.purchases as f32).ln_1p() / norm.count_log_scale,
            (p.spend as f32).ln_1p() / norm.spend_log_scale,
        ],
        None => [-1.0; CLASSICAL_DIM],
    };
    row[CLASSICAL_AT..CLASSICAL_AT + CLASSICAL_DIM].copy_from_slice(&out);
}

/// Gauss hypergeometric ₂F₁(a, b; c; z) for 0 <= z < 1, by its series.
fn hyp2f1(a: f64, b: f64, c: f64, z: f64) -> f64 {
    let (mut term, mut sum) = (1.0, 1.0);
    for k in 0..10_000 {
        let k = f64::from(k);
        term *= (a + k) * (b + k) / ((c + k) * (k + 1.0)) * z;
        sum += term;
        if term.abs() < 1e-12 * sum.abs() {
            break;
        }
    }
    sum
}
