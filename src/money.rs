//! Money without floats: [`Amount`] counts pico-units (10⁻¹² of the billing currency) in an
//! integer, parsed from and printed as decimal strings (`"0.000002"`, `"50.00"`).
//!
//! Per-token prices are tiny (0.15 per million tokens is 0.00000015 per token), so the unit must
//! be far below a cent; twelve decimals hold any realistic per-token rate exactly, and the
//! ledger and the spend counters add integers, so no total ever drifts.

use std::fmt;

/// Decimal places an [`Amount`] keeps.
pub const SCALE: u32 = 12;
/// Pico-units in one unit of the currency.
pub const UNIT: i128 = 1_000_000_000_000;

/// A non-negative amount of money in pico-units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Amount(i128);

/// Why a decimal string is not an amount.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error(
        "{0:?} is not a decimal amount (expected digits with an optional '.', e.g. \"0.000002\" or \"50.00\")"
    )]
    NotDecimal(String),
    #[error("{0:?} has more than 12 decimal places")]
    TooPrecise(String),
    #[error("{0:?} is too large")]
    TooLarge(String),
}

impl Amount {
    pub const ZERO: Amount = Amount(0);

    pub fn from_pico(pico: i128) -> Self {
        Self(pico.max(0))
    }

    pub fn pico(self) -> i128 {
        self.0
    }

    /// Parses a plain decimal: digits, at most one '.', at most 12 decimals; no sign, exponent
    /// or blanks (a price written `1e-6` or `-1` is a mistake to report, not to guess at).
    pub fn parse(text: &str) -> Result<Self, AmountError> {
        let not_decimal = || AmountError::NotDecimal(text.to_owned());
        let (whole, fraction) = match text.split_once('.') {
            Some((whole, fraction)) => (whole, fraction),
            None => (text, ""),
        };
        let digits = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
        if (whole.is_empty() && fraction.is_empty())
            || !digits(whole)
            || !digits(fraction)
            || (text.contains('.') && fraction.is_empty())
        {
            return Err(not_decimal());
        }
        if fraction.len() > SCALE as usize {
            return Err(AmountError::TooPrecise(text.to_owned()));
        }
        let too_large = || AmountError::TooLarge(text.to_owned());
        let whole: i128 = if whole.is_empty() {
            0
        } else if whole.len() > 24 {
            return Err(too_large());
        } else {
            whole.parse().map_err(|_| not_decimal())?
        };
        let mut fraction_pico: i128 = 0;
        for (place, digit) in fraction.bytes().enumerate() {
            let weight = 10_i128.pow(SCALE - 1 - place as u32);
            fraction_pico += i128::from(digit - b'0') * weight;
        }
        whole
            .checked_mul(UNIT)
            .and_then(|pico| pico.checked_add(fraction_pico))
            .map(Amount)
            .ok_or_else(too_large)
    }

    /// This rate (per token) times `tokens`, saturating.
    pub fn times(self, tokens: u64) -> Amount {
        Amount(self.0.saturating_mul(i128::from(tokens)))
    }

    pub fn saturating_add(self, other: Amount) -> Amount {
        Amount(self.0.saturating_add(other.0))
    }

    /// The amount in pico-units as a counter value (saturating at `u64::MAX`).
    pub fn as_counter(self) -> u64 {
        u64::try_from(self.0).unwrap_or(u64::MAX)
    }

    /// Decimal text with exactly `places` decimals (at most 12), rounded half up: reports show
    /// six (`"0.001500"`), the exact value keeps twelve.
    pub fn to_decimal(self, places: u32) -> String {
        let places = places.min(SCALE);
        let step = 10_i128.pow(SCALE - places);
        let rounded = (self.0 + step / 2) / step;
        let scale = 10_i128.pow(places);
        if places == 0 {
            return rounded.to_string();
        }
        format!(
            "{}.{:0width$}",
            rounded / scale,
            rounded % scale,
            width = places as usize
        )
    }
}

impl fmt::Display for Amount {
    /// Shortest exact decimal: `50`, `0.000002`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let exact = self.to_decimal(SCALE);
        let trimmed = exact.trim_end_matches('0').trim_end_matches('.');
        f.write_str(trimmed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_parse_exactly_from_plain_decimals() {
        assert_eq!(Amount::parse("50.00").unwrap().pico(), 50 * UNIT);
        assert_eq!(Amount::parse("0.000002").unwrap().pico(), 2_000_000);
        assert_eq!(Amount::parse("0.000000000001").unwrap().pico(), 1);
        assert_eq!(Amount::parse(".5").unwrap().pico(), UNIT / 2);
        assert_eq!(Amount::parse("7").unwrap().pico(), 7 * UNIT);
    }

    #[test]
    fn amounts_refuse_anything_but_a_plain_decimal() {
        for text in [
            "", ".", "1.", "-1", "+1", "1e-6", " 1", "1,5", "0x10", "1.2.3", "NaN",
        ] {
            assert!(
                matches!(Amount::parse(text), Err(AmountError::NotDecimal(_))),
                "{text:?}"
            );
        }
        assert!(matches!(
            Amount::parse("0.0000000000001"),
            Err(AmountError::TooPrecise(_))
        ));
        assert!(matches!(
            Amount::parse(&"9".repeat(30)),
            Err(AmountError::TooLarge(_))
        ));
    }

    #[test]
    fn amounts_print_rounded_half_up_or_exact() {
        let rate = Amount::parse("0.00000015").unwrap();
        assert_eq!(rate.times(10_000).to_decimal(6), "0.001500");
        assert_eq!(Amount::from_pico(500_000).to_decimal(6), "0.000001");
        assert_eq!(Amount::from_pico(499_999).to_decimal(6), "0.000000");
        assert_eq!(rate.to_string(), "0.00000015");
        assert_eq!(Amount::parse("50.00").unwrap().to_string(), "50");
        assert_eq!(Amount::ZERO.to_decimal(2), "0.00");
    }
}
