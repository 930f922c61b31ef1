//! The default segment taxonomy (DESIGN.md, Segments) as one type: the
//! trainer's labels, the built-in models' output order and the names a
//! manifest lists all come from it. A model may carry its own taxonomy in
//! its manifest; the pipeline then works with those names as text.

use std::fmt;

/// One of the five default segments, in the models' output order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Segment {
    /// Spend in the horizon at or above the high-value threshold.
    HighValue,
    /// At least one purchase in the horizon, below the threshold.
    ActiveBuyer,
    /// Activity in the horizon but no purchase.
    Browser,
    /// No activity in the horizon; purchased before.
    AtRisk,
    /// No activity in the horizon; never purchased.
    Dormant,
}

impl Segment {
    /// Every segment, in output order (`ALL[s.index()] == s`).
    pub const ALL: [Segment; 5] = [
        Segment::HighValue,
        Segment::ActiveBuyer,
        Segment::Browser,
        Segment::AtRisk,
        Segment::Dormant,
    ];

    /// Number of segments (the width of `segment_probs`).
    pub const COUNT: usize = Self::ALL.len();

    /// Position in the models' `segment_probs` output.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The segment at `index` of the output, if there is one.
    pub fn from_index(index: usize) -> Option<Segment> {
        Self::ALL.get(index).copied()
    }

    /// The name in manifests, `SegmentChange` records and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Segment::HighValue => "high_value",
            Segment::ActiveBuyer => "active_buyer",
            Segment::Browser => "browser",
            Segment::AtRisk => "at_risk",
            Segment::Dormant => "dormant",
        }
    }

    /// The names in output order, as a manifest lists them.
    pub fn names() -> Vec<String> {
        Self::ALL.iter().map(|s| s.name().to_string()).collect()
    }
}

impl fmt::Display for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_names_and_order_agree() {
        for (i, s) in Segment::ALL.iter().enumerate() {
            assert_eq!(s.index(), i);
            assert_eq!(Segment::from_index(i), Some(*s));
            assert_eq!(s.to_string(), Segment::names()[i]);
        }
        assert_eq!(Segment::from_index(Segment::COUNT), None);
        assert_eq!(
            Segment::names(),
            [
                "high_value",
                "active_buyer",
                "browser",
                "at_risk",
                "dormant"
            ]
        );
    }
}
