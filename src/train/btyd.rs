//! The classical baselines, fitted: BG/NBD (Fader, Hardie and Lee 2005,
//! "Counting your customers the easy way"), the "buy till you die" model a
//! team compares a purchase-propensity model against, and Gamma-Gamma for
//! order values (Fader, Hardie and Lee 2005, "RFM and CLV").
//!
//! While alive, a customer buys as a Poisson process with rate λ ~
//! Gamma(r, α); after each purchase they drop out with probability
//! p ~ Beta(a, b). A customer is summarized by x (repeat purchases), t_x
//! (first to last purchase) and T (first purchase to the cut), in days; the
//! four parameters are fitted by maximum likelihood (Nelder-Mead on their
//! logarithms). Order values are Gamma(p, ν) per customer with ν ~
//! Gamma(q, γ); p, q and γ are fitted the same way on each customer's
//! number of purchases and mean order value.
//!
//! The trainer reads x, t_x, T and the mean order value back from the
//! lifetime customer features, so the baseline is scored on exactly the
//! examples the learned models are scored on. The fitted parameters also
//! become those models' classical inputs (`features::classical`), which
//! hold the evaluation side (probability alive, expected purchases and
//! spend). Customers who never purchased are outside the model; they get
//! the purchase rate of such customers in training.

use super::examples::ExampleSet;
pub use crate::features::classical::BgNbd;
use crate::features::classical::{GammaGamma, Rfm};
use crate::features::{Classical, FeatureSpec};
use crate::model::reference::Outputs;

impl BgNbd {
    /// Log-likelihood of one customer.
    pub fn log_likelihood(&self, c: &Rfm) -> f64 {
        let BgNbd { r, alpha, a, b } = *self;
        let x = c.x;
        let a1 = ln_gamma(r + x) - ln_gamma(r) + r * alpha.ln();
        let a2 = ln_beta(a, b + x) - ln_beta(a, b);
        let a3 = -(r + x) * (alpha + c.t).ln();
        if x > 0.0 {
            let a4 = a.ln() - (b + x - 1.0).ln() - (r + x) * (alpha + c.t_x).ln();
            a1 + a2 + log_add(a3, a4)
        } else {
            a1 + a2 + a3
        }
    }

    /// Fits the parameters by maximum likelihood; None without customers
    /// or when the optimum is not finite.
    pub fn fit(customers: &[Rfm]) -> Option<BgNbd> {
        if customers.is_empty() {
            return None;
        }
        let from = |v: &[f64; 4]| BgNbd {
            r: v[0].exp(),
            alpha: v[1].exp(),
            a: v[2].exp(),
            b: v[3].exp(),
        };
        let objective = |v: &[f64; 4]| {
            let m = from(v);
            let ll: f64 = customers.iter().map(|c| m.log_likelihood(c)).sum();
            finite_or_max(-ll / customers.len() as f64)
        };
        let mean_t = customers.iter().map(|c| c.t).sum::<f64>() / customers.len() as f64;
        let mut start = [0.0, mean_t.max(1.0).ln(), 0.0, 0.0];
        // Restarts from the best point shake Nelder-Mead out of a collapse.
        for _ in 0..3 {
            start = nelder_mead(&objective, start, 0.5, 4000);
        }
        let m = from(&start);
        [m.r, m.alpha, m.a, m.b]
            .iter()
            .all(|v| v.is_finite() && *v > 0.0)
            .then_some(m)
    }
}

impl GammaGamma {
    /// Log-likelihood of a customer's mean order value `mean` over `n`
    /// purchases (the constant terms in the values themselves left out).
    pub fn log_likelihood(&self, n: f64, mean: f64) -> f64 {
        let GammaGamma { p, q, gamma } = *self;
        ln_gamma(p * n + q) - ln_gamma(p * n) - ln_gamma(q)
            + q * gamma.ln()
            + (p * n - 1.0) * mean.ln()
            + p * n * n.ln()
            - (p * n + q) * (gamma + mean * n).ln()
    }

    /// Fits p, q (> 1) and γ by maximum likelihood on (purchases, mean
    /// order value) pairs with a positive mean; None with fewer than 20 or
    /// when the optimum is not finite.
    pub fn fit(customers: &[(f64, f64)]) -> Option<GammaGamma> {
        let customers: Vec<(f64, f64)> = customers
            .iter()
            .copied()
            .filter(|&(n, m)| n >= 1.0 && m > 0.0)
            .collect();
        if customers.len() < 20 {
            return None;
        }
        let from = |v: &[f64; 3]| GammaGamma {
            p: v[0].exp(),
            q: 1.0 + v[1].exp(),
            gamma: v[2].exp(),
        };
        let objective = |v: &[f64; 3]| {
            let g = from(v);
            let ll: f64 = customers.iter().map(|&(n, m)| g.log_likelihood(n, m)).sum();
            finite_or_max(-ll / customers.len() as f64)
        };
        // Start where the population mean order value is p·γ/(q − 1).
        let mean = customers.iter().map(|c| c.1).sum::<f64>() / customers.len() as f64;
        let mut start = [0.0, 0.0, mean.ln()];
        for _ in 0..3 {
            start = nelder_mead(&objective, start, 0.5, 4000);
        }
        let g = from(&start);
        (g.p.is_finite() && g.q.is_finite() && g.gamma.is_finite() && g.q > 1.0 && g.p > 0.0)
            .then_some(g)
    }
}

fn finite_or_max(v: f64) -> f64 {
    if v.is_finite() {
        v
    } else {
        f64::MAX
    }
}

/// The fitted baseline: BG/NBD with Gamma-Gamma for customers with a
/// purchase, the training purchase rate for the others.
#[derive(Debug, Clone, Copy)]
pub struct Baseline {
    /// The models (None when BG/NBD could not be fitted).
    pub classical: Option<Classical>,
    /// Purchase rate in training of customers who never purchased.
    pub never_rate: f64,
}

impl Baseline {
    /// Fits on the training examples: each customer's latest one (the end
    /// of its calibration period).
    pub fn fit(spec: &FeatureSpec, train: &ExampleSet, horizon_days: f64) -> Baseline {
        let norm = &spec.normalization;
        let mut latest: std::collections::HashMap<u32, (i64, usize)> = Default::default();
        let (mut never, mut never_bought) = (0usize, 0usize);
        for i in 0..train.len() {
            if Rfm::of(norm, train.customer_features_of(i)).is_none() {
                never += 1;
                never_bought += usize::from(train.labels[i].purchased);
                continue;
            }
            let e = latest.entry(train.customer[i]).or_insert((i64::MIN, i));
            if train.cut_ms[i] > e.0 {
                *e = (train.cut_ms[i], i);
            }
        }
        let customers: Vec<(Rfm, f64, f64)> = latest
            .values()
            .filter_map(|(_, i)| Rfm::of(norm, train.customer_features_of(*i)))
            .collect();
        let rfm: Vec<Rfm> = customers.iter().map(|c| c.0).collect();
        let values: Vec<(f64, f64)> = customers.iter().map(|c| (c.1, c.2)).collect();
        let never_rate = if never == 0 {
            0.0
        } else {
            never_bought as f64 / never as f64
        };
        let classical = BgNbd::fit(&rfm).map(|bgnbd| Classical {
            bgnbd,
            gamma_gamma: GammaGamma::fit(&values),
            horizon_days,
            never_rate,
        });
        Baseline {
            // The manifest's JSON carries these exactly (serde_json's
            // float_roundtrip): serving reads the parameters training used.
            classical,
            never_rate,
        }
    }

    /// Outputs for `set`: purchase probability, churn as "no purchase"
    /// (BG/NBD knows nothing of browsing), and expected purchases times the
    /// Gamma-Gamma expected order value as spend. No segments.
    pub fn predict(&self, spec: &FeatureSpec, set: &ExampleSet, segments: usize) -> Outputs {
        let n = set.len();
        let mut out = Outputs {
            segment_probs: vec![1.0 / segments as f32; n * segments],
            purchase_probability: Vec::with_capacity(n),
            churn_probability: Vec::with_capacity(n),
            predicted_spend: Vec::with_capacity(n),
            segment_contributions: Vec::new(),
        };
        for i in 0..n {
            let f = set.customer_features_of(i);
            let (p, spend) = match self
                .classical
                .and_then(|c| c.predict(&spec.normalization, f))
            {
                Some(p) => (p.p_purchase, p.spend),
                None => (self.never_rate, 0.0),
            };
            out.purchase_probability.push(p as f32);
            out.churn_probability.push((1.0 - p) as f32);
            out.predicted_spend.push(spend as f32);
        }
        out
    }
}

/// ln(e^a + e^b) without overflow.
fn log_add(a: f64, b: f64) -> f64 {
    let m = a.max(b);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + ((a - m).exp() + (b - m).exp()).ln()
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, 9 terms; relative error ~1e-15).
pub fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x)Γ(1−x) = π / sin(πx).
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut sum = C[0];
    for (i, c) in C.iter().enumerate().skip(1) {
        sum += c / (x + i as f64);
    }
    let t = x + G + 0.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

fn ln_beta(a: f64, b: f64) -> f64 {
    ln_gamma(a) + ln_gamma(b) - ln_gamma(a + b)
}

/// Minimizes `f` from `start` (simplex of the given step), `iterations` at most.
fn nelder_mead<const N: usize>(
    f: &impl Fn(&[f64; N]) -> f64,
    start: [f64; N],
    step: f64,
    iterations: usize,
) -> [f64; N] {
    let mut simplex: Vec<([f64; N], f64)> = (0..=N)
        .map(|i| {
            let mut p = start;
            if i > 0 {
                p[i - 1] += step;
            }
            (p, f(&p))
        })
        .collect();
    for _ in 0..iterations {
        simplex.sort_by(|a, b| a.1.total_cmp(&b.1));
        let (best, worst) = (simplex[0].1, simplex[N].1);
        if (worst - best).abs() < 1e-10 * (1.0 + best.abs()) {
            break;
        }
        let mut centroid = [0.0; N];
        for (p, _) in &simplex[..N] {
            for d in 0..N {
                centroid[d] += p[d] / N as f64;
            }
        }
        let along = |t: f64| {
            let mut p = [0.0; N];
            for d in 0..N {
                p[d] = centroid[d] + t * (simplex[N].0[d] - centroid[d]);
            }
            p
        };
        let reflected = along(-1.0);
        let fr = f(&reflected);
        if fr < simplex[0].1 {
            let expanded = along(-2.0);
            let fe = f(&expanded);
            simplex[N] = if fe < fr {
                (expanded, fe)
            } else {
                (reflected, fr)
            };
        } else if fr < simplex[N - 1].1 {
            simplex[N] = (reflected, fr);
        } else {
            let contracted = if fr < simplex[N].1 {
                along(-0.5)
            } else {
                along(0.5)
            };
            let fc = f(&contracted);
            if fc < simplex[N].1.min(fr) {
                simplex[N] = (contracted, fc);
            } else {
                // Shrink toward the best point.
                let best = simplex[0].0;
                for (p, v) in simplex.iter_mut().skip(1) {
                    for d in 0..N {
                        p[d] = best[d] + 0.5 * (p[d] - best[d]);
                    }
                    *v = f(p);
                }
            }
        }
    }
    simplex.sort_by(|a, b| a.1.total_cmp(&b.1));
    simplex[0].0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Marsaglia-Tsang Gamma(shape, 1) sampling.
    fn gamma(rng: &mut Rng, shape: f64) -> f64 {
        if shape < 1.0 {
            let u = rng.unit();
            return gamma(rng, shape + 1.0) * u.powf(1.0 / shape);
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let (u1, u2) = (rng.unit(), rng.unit());
            let n = (-2.0 * u1.max(1e-300).ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            let v = (1.0 + c * n).powi(3);
            if v <= 0.0 {
                continue;
            }
            let u = rng.unit();
            if u.ln() < 0.5 * n * n + d - d * v + d * v.ln() {
                return d * v;
            }
        }
    }

    /// Customers simulated from the model itself, observed for `t` days
    /// after their first purchase, and their purchases in the next `h`.
    fn simulate(m: &BgNbd, n: usize, t: f64, h: f64, seed: u64) -> Vec<(Rfm, bool)> {
        let mut rng = Rng::new(seed);
        (0..n)
            .map(|_| {
                let lambda = gamma(&mut rng, m.r) / m.alpha;
                let ga = gamma(&mut rng, m.a);
                let p = ga / (ga + gamma(&mut rng, m.b));
                let (mut now, mut x, mut t_x) = (0.0, 0.0, 0.0);
                let mut bought_later = false;
                loop {
                    now += -rng.unit().max(1e-300).ln() / lambda;
                    if now > t + h {
                        break;
                    }
                    if now > t {
                        bought_later = true;
                        break;
                    }
                    x += 1.0;
                    t_x = now;
                    // Dropout happens right after a repeat purchase.
                    if rng.unit() < p {
                        break;
                    }
                }
                (Rfm { x, t_x, t }, bought_later)
            })
            .collect()
    }

    #[test]
    fn ln_gamma_matches_known_values() {
        assert!((ln_gamma(1.0)).abs() < 1e-12);
        assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-12);
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-12);
        assert!((ln_gamma(0.1) - 2.252_712_651_734_206).abs() < 1e-10);
    }

    /// Parameters of the CDNOW fit in the paper (in weeks); the fit on
    /// 20,000 simulated customers recovers them, and its probabilities
    /// match what the simulated customers do next.
    #[test]
    fn fitting_recovers_parameters_of_simulated_customers() {
        let truth = BgNbd {
            r: 0.243,
            alpha: 4.414,
            a: 0.793,
            b: 2.426,
        };
        let data = simulate(&truth, 20_000, 39.0, 39.0, 7);
        let rfm: Vec<Rfm> = data.iter().map(|(c, _)| *c).collect();
        let fit = BgNbd::fit(&rfm).expect("a fit");
        let close = |got: f64, want: f64, tol: f64| (got / want - 1.0).abs() < tol;
        assert!(close(fit.r, truth.r, 0.10), "r {fit:?}");
        assert!(close(fit.alpha, truth.alpha, 0.15), "alpha {fit:?}");
        assert!(close(fit.a, truth.a, 0.35), "a {fit:?}");
        assert!(close(fit.b, truth.b, 0.35), "b {fit:?}");
        // The fit is at least as likely as the truth on its own data.
        let ll = |m: &BgNbd| rfm.iter().map(|c| m.log_likelihood(c)).sum::<f64>();
        assert!(ll(&fit) >= ll(&truth) - 1e-6);
        // Calibration on the holdout period, overall and for repeat buyers.
        let observed = data.iter().filter(|(_, b)| *b).count() as f64 / data.len() as f64;
        let predicted = rfm
            .iter()
            .map(|c| fit.p_purchase_within(c, 39.0))
            .sum::<f64>()
            / rfm.len() as f64;
        assert!(
            (observed - predicted).abs() < 0.015,
            "{observed} vs {predicted}"
        );
        let active: Vec<&(Rfm, bool)> = data.iter().filter(|(c, _)| c.x >= 3.0).collect();
        let observed = active.iter().filter(|(_, b)| *b).count() as f64 / active.len() as f64;
        let predicted = active
            .iter()
            .map(|(c, _)| fit.p_purchase_within(c, 39.0))
            .sum::<f64>()
            / active.len() as f64;
        assert!(
            (observed - predicted).abs() < 0.04,
            "{observed} vs {predicted}"
        );
    }

    #[test]
    fn more_recent_buyers_are_more_likely_alive_and_to_buy() {
        let m = BgNbd {
            r: 0.243,
            alpha: 4.414,
            a: 0.793,
            b: 2.426,
        };
        let recent = Rfm {
            x: 4.0,
            t_x: 38.0,
            t: 39.0,
        };
        let lapsed = Rfm {
            x: 4.0,
            t_x: 10.0,
            t: 39.0,
        };
        assert!(m.p_alive(&recent) > m.p_alive(&lapsed));
        assert!(m.p_purchase_within(&recent, 10.0) > m.p_purchase_within(&lapsed, 10.0));
        assert!(m.expected_purchases(&recent, 10.0) > m.expected_purchases(&lapsed, 10.0));
        assert_eq!(
            m.p_alive(&Rfm {
                x: 0.0,
                t_x: 0.0,
                t: 39.0
            }),
            1.0
        );
        // The paper's worked example: a customer with x = 2, t_x = 30.43,
        // T = 38.86 expects about 1.23 purchases in the next 39 weeks.
        let e = m.expected_purchases(
            &Rfm {
                x: 2.0,
                t_x: 30.43,
                t: 38.86,
            },
            39.0,
        );
        assert!((e - 1.226).abs() < 0.02, "{e}");
    }

    /// Gamma-Gamma on 5,000 simulated customers recovers its parameters;
    /// a customer's expected order value lies between their own mean and
    /// the population's, nearer their own the more they bought.
    #[test]
    fn gamma_gamma_recovers_parameters_and_shrinks_toward_the_population() {
        let truth = GammaGamma {
            p: 6.25,
            q: 3.74,
            gamma: 15.44,
        };
        let mut rng = Rng::new(3);
        let data: Vec<(f64, f64)> = (0..5_000)
            .map(|i| {
                let n = 1 + i % 8;
                let nu = gamma(&mut rng, truth.q) / truth.gamma;
                let total: f64 = (0..n).map(|_| gamma(&mut rng, truth.p) / nu).sum();
                (n as f64, total / n as f64)
            })
            .collect();
        let fit = GammaGamma::fit(&data).expect("a fit");
        let close = |got: f64, want: f64, tol: f64| (got / want - 1.0).abs() < tol;
        assert!(close(fit.p, truth.p, 0.15), "p {fit:?}");
        assert!(close(fit.q, truth.q, 0.2), "q {fit:?}");
        assert!(close(fit.gamma, truth.gamma, 0.3), "gamma {fit:?}");
        let population = fit.p * fit.gamma / (fit.q - 1.0);
        let own = 3.0 * population;
        let (one, many) = (fit.expected_value(1.0, own), fit.expected_value(20.0, own));
        assert!(
            population < one && one < many && many < own,
            "{population} {one} {many} {own}"
        );
        assert!(GammaGamma::fit(&data[..10]).is_none());
    }
}
