//! The pause before trying again after the `n`th failure in a row: doubling from a first pause
//! up to a bound. Pure; used wherever something misbehaving is retried (a peer answering
//! nonsense, a dispatcher that stopped).

use std::time::Duration;

/// `first` for `n` ≤ 1, doubling with every further failure, never above `max`.
pub fn doubling(first: Duration, max: Duration, n: u32) -> Duration {
    first
        .saturating_mul(1u32 << n.saturating_sub(1).min(16))
        .min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pause_doubles_from_the_first_to_the_bound_and_never_overflows() {
        let ms = Duration::from_millis;
        let cases = [
            (0, 10),
            (1, 10),
            (2, 20),
            (3, 40),
            (7, 640),
            (8, 1_000),
            (u32::MAX, 1_000),
        ];
        for (n, want) in cases {
            assert_eq!(doubling(ms(10), ms(1_000), n), ms(want), "failure {n}");
        }
        assert_eq!(doubling(Duration::MAX, Duration::MAX, 40), Duration::MAX);
    }
}
