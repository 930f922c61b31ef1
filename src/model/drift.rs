//! Drift: where the customers a model scores now stand against the
//! customers it was trained on. At training, every customer feature and
//! each output is cut into at most [`MAX_BINS`] bins at the deciles of the
//! validation examples, and each bin's share is kept in the manifest
//! ([`Reference`]). Live, each snapshot's customer features are put in the
//! same bins ([`Reference::feature_bins`], four bits each); the population
//! stability index of a cut's bin counts against the recorded shares
//! ([`psi`]) says how far each feature moved.

use serde::{Deserialize, Serialize};

use super::reference::Outputs;

/// Bins per feature at most (deciles; fewer when values repeat).
pub const MAX_BINS: usize = 10;
/// The usual reading of the population stability index: below 0.1 no
/// real shift, 0.1 to 0.25 a moderate one, above 0.25 a major one.
pub const PSI_MODERATE: f64 = 0.1;
/// See [`PSI_MODERATE`].
pub const PSI_MAJOR: f64 = 0.25;
/// Names of the outputs in [`Reference::outputs`], in order.
pub const OUTPUT_NAMES: [&str; 3] = [
    "purchase_probability",
    "churn_probability",
    "predicted_spend",
];

/// One quantity cut into bins: `edges` are the upper ends of every bin but
/// the last (a value `x` is in the bin of the first edge `>= x`), `shares`
/// each bin's fraction of the reference examples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Binned {
    /// The feature's (or output's) name.
    pub name: String,
    /// Upper bin edges, increasing.
    pub edges: Vec<f32>,
    /// The reference examples' share in each bin (`edges.len() + 1`).
    pub shares: Vec<f64>,
}

impl Binned {
    /// Bins at the deciles of `values` (non-finite values are left out of
    /// the edges but counted in the bin they fall in).
    pub fn fit(name: &str, values: &[f32]) -> Binned {
        let mut sorted: Vec<f32> = values.iter().copied().filter(|v| v.is_finite()).collect();
        sorted.sort_by(f32::total_cmp);
        let mut edges: Vec<f32> = Vec::with_capacity(MAX_BINS - 1);
        if !sorted.is_empty() {
            for k in 1..MAX_BINS {
                // The k-th decile's last value: a bin holds the values up
                // to and including its edge.
                let at = (k * sorted.len() / MAX_BINS).saturating_sub(1);
                let e = sorted[at.min(sorted.len() - 1)];
                // The largest value is no upper edge: nothing would be above it.
                if e < sorted[sorted.len() - 1] && edges.last().is_none_or(|l| e > *l) {
                    edges.push(e);
                }
            }
        }
        let mut b = Binned {
            name: name.to_string(),
            shares: vec![0.0; edges.len() + 1],
            edges,
        };
        let mut counts = vec![0usize; b.shares.len()];
        for v in values {
            counts[b.bin(*v)] += 1;
        }
        let n = values.len().max(1) as f64;
        for (share, c) in b.shares.iter_mut().zip(counts) {
            *share = c as f64 / n;
        }
        b
    }

    /// The bin of `x` (NaN: the first).
    pub fn bin(&self, x: f32) -> usize {
        self.edges.partition_point(|e| x > *e)
    }

    /// Bins.
    pub fn bins(&self) -> usize {
        self.edges.len() + 1
    }
}

/// The distributions a model was trained on (in its manifest).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Reference {
    /// Examples the shares were counted on.
    pub examples: usize,
    /// Every customer feature, in feature order.
    pub features: Vec<Binned>,
    /// The outputs, named as in [`OUTPUT_NAMES`].
    pub outputs: Vec<Binned>,
}

impl Reference {
    /// The reference of `rows` (customer-feature rows, `names.len()` values
    /// each, concatenated) and the model's `outputs` on them.
    pub fn fit(rows: &[f32], names: &[String], outputs: &Outputs) -> Reference {
        let f = names.len().max(1);
        let n = rows.len() / f;
        let features = names
            .iter()
            .enumerate()
            .map(|(j, name)| {
                let column: Vec<f32> = (0..n).map(|i| rows[i * f + j]).collect();
                Binned::fit(name, &column)
            })
            .collect();
        let outputs = [
            &outputs.purchase_probability,
            &outputs.churn_probability,
            &outputs.predicted_spend,
        ]
        .iter()
        .zip(OUTPUT_NAMES)
        .map(|(v, name)| Binned::fit(name, v))
        .collect();
        Reference {
            examples: n,
            features,
            outputs,
        }
    }

    /// Whether the features' bins fit in four bits each (the packing of
    /// [`Reference::feature_bins`]).
    pub fn packable(&self) -> bool {
        self.features.iter().all(|b| b.bins() <= 16)
    }

    /// The bins of one customer-feature row, two per byte (low nibble
    /// first); empty if `row` does not have one value per feature.
    pub fn feature_bins(&self, row: &[f32]) -> Vec<u8> {
        if row.len() != self.features.len() || !self.packable() {
            return Vec::new();
        }
        let mut out = vec![0u8; row.len().div_ceil(2)];
        for (j, (b, x)) in self.features.iter().zip(row).enumerate() {
            out[j / 2] |= (b.bin(*x) as u8 & 0x0f) << (4 * (j % 2));
        }
        out
    }
}

/// The `j`-th bin of a [`Reference::feature_bins`] packing.
pub fn unpacked(bins: &[u8], j: usize) -> Option<usize> {
    bins.get(j / 2)
        .map(|b| usize::from((b >> (4 * (j % 2))) & 0x0f))
}

pub use crate::telemetry::drift::psi;

/// Each snapshot's bins of every reference quantity (features unpacked
/// from `feature_bins`, then the outputs binned from `outputs`: purchase,
/// churn, spend), as [`crate::telemetry::drift::Scored::bins`] takes them;
/// empty for a snapshot without feature bins.
pub fn quantity_bins(
    r: &Reference,
    feature_bins: &[Vec<u8>],
    outputs: [&[f32]; 3],
) -> Vec<Vec<u8>> {
    let f = r.features.len();
    feature_bins
        .iter()
        .enumerate()
        .map(|(i, packed)| {
            if packed.is_empty() {
                return Vec::new();
            }
            let mut row: Vec<u8> = (0..f)
                .map(|j| unpacked(packed, j).unwrap_or(0) as u8)
                .collect();
            for (out, b) in outputs.iter().zip(&r.outputs) {
                row.push(out.get(i).map_or(0, |x| b.bin(*x)) as u8);
            }
            row
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deciles_bin_their_own_sample_evenly_and_a_shift_shows() {
        let values: Vec<f32> = (0..1000).map(|i| i as f32).collect();
        let b = Binned::fit("x", &values);
        assert_eq!(b.bins(), 10);
        assert!(
            b.shares.iter().all(|s| (s - 0.1).abs() < 1e-9),
            "{:?}",
            b.shares
        );
        let count = |vals: &[f32]| {
            let mut c = vec![0u64; b.bins()];
            for v in vals {
                c[b.bin(*v)] += 1;
            }
            c
        };
        assert!(psi(&b.shares, &count(&values)).abs() < 1e-12);
        let shifted: Vec<f32> = values.iter().map(|v| v + 300.0).collect();
        let moved = psi(&b.shares, &count(&shifted));
        assert!(moved > PSI_MAJOR, "{moved}");
        let nudged: Vec<f32> = values.iter().map(|v| v + 10.0).collect();
        assert!(psi(&b.shares, &count(&nudged)) < PSI_MODERATE);
        assert!(psi(&b.shares, &[0; 10]).is_nan());
    }

    #[test]
    fn repeated_values_give_fewer_bins_and_every_value_a_bin() {
        // 70 % zeros, then a spread: the zeros are one bin.
        let values: Vec<f32> = (0..100)
            .map(|i| if i < 70 { 0.0 } else { i as f32 })
            .collect();
        let b = Binned::fit("x", &values);
        assert!(b.bins() < 10 && b.bins() >= 3, "{b:?}");
        assert_eq!(b.bin(0.0), 0);
        assert!((b.shares[0] - 0.7).abs() < 1e-9, "{:?}", b.shares);
        assert_eq!(b.bin(1e9), b.bins() - 1);
        assert_eq!(b.bin(f32::NAN), 0);
        let constant = Binned::fit("c", &[2.0; 50]);
        assert_eq!(
            (constant.bins(), constant.shares.as_slice()),
            (1, &[1.0][..])
        );
        assert_eq!(Binned::fit("e", &[]).bins(), 1);
    }

    #[test]
    fn feature_bins_pack_two_per_byte() {
        let names: Vec<String> = (0..3).map(|j| format!("f{j}")).collect();
        // Three features: j * i over 100 rows.
        let rows: Vec<f32> = (0..100)
            .flat_map(|i| (0..3).map(move |j| (j * i) as f32))
            .collect();
        let outputs = Outputs {
            segment_probs: Vec::new(),
            purchase_probability: vec![0.5; 100],
            churn_probability: vec![0.5; 100],
            predicted_spend: vec![1.0; 100],
            segment_contributions: Vec::new(),
        };
        let r = Reference::fit(&rows, &names, &outputs);
        assert_eq!((r.examples, r.features.len(), r.outputs.len()), (100, 3, 3));
        let packed = r.feature_bins(&[0.0, 99.0, 198.0]);
        assert_eq!(packed.len(), 2);
        let bins: Vec<usize> = (0..3).filter_map(|j| unpacked(&packed, j)).collect();
        assert_eq!(bins, [0, 9, 9]);
        assert!(r.feature_bins(&[1.0]).is_empty());
        assert_eq!(unpacked(&packed, 4), None);
    }
}
