//! Time units shared by every stage: event times are milliseconds since the
//! Unix epoch, and windows, horizons and retention are whole days of them.

use std::time::Duration;

/// Milliseconds in a day.
pub const DAY_MS: i64 = 86_400_000;

/// A duration in whole milliseconds, saturating at `i64::MAX`.
pub fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_become_milliseconds_and_saturate() {
        assert_eq!(millis(Duration::from_secs(86_400)), DAY_MS);
        assert_eq!(millis(Duration::from_millis(1)), 1);
        assert_eq!(millis(Duration::MAX), i64::MAX);
    }
}
