//! How the console shows money and time: minor units as the deployment's currency (ISO 4217
//! minor-unit digits), an amount typed in major units back to minor units (checked, never a
//! float), and unix seconds as UTC text a `<time>` element carries (console.js shows it in the
//! browser's time zone).

use crate::reports::format_day;

/// The ISO 4217 minor-unit digits of `currency`: 0 for the zero-decimal currencies, 3 for the
/// three-decimal ones, 2 for every other.
pub fn minor_digits(currency: &str) -> u32 {
    const ZERO: [&str; 16] = [
        "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND",
        "VUV", "XAF", "XOF",
    ];
    const THREE: [&str; 7] = ["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"];
    if ZERO.contains(&currency) {
        0
    } else if THREE.contains(&currency) {
        3
    } else {
        2
    }
}

/// `minor` minor units of `currency` as text: `1234` EUR is `12.34 EUR`, `-5` is `-0.05 EUR`.
pub fn money(minor: i64, currency: &str) -> String {
    let digits = minor_digits(currency);
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    if digits == 0 {
        return format!("{sign}{abs} {currency}");
    }
    let scale = 10u64.pow(digits);
    let width = digits as usize;
    format!(
        "{sign}{}.{:0width$} {currency}",
        abs / scale,
        abs % scale,
        width = width
    )
}

/// Why a typed amount is not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AmountInputError {
    #[error("an amount is digits with an optional decimal point, e.g. 1.50")]
    Malformed,
    #[error("the currency has {0} decimal places")]
    TooPrecise(u32),
    #[error("the amount is too large")]
    TooLarge,
}

/// An amount typed in major units (`"1.5"`, `"1.50"`, `"12"`) in minor units of a currency with
/// `digits` minor-unit digits. Only non-negative; no exponent, sign or thousands separator.
///
/// # Errors
/// [`AmountInputError`] when it is not such an amount or does not fit an `i64`.
pub fn parse_amount(text: &str, digits: u32) -> Result<i64, AmountInputError> {
    let text = text.trim();
    let (whole, frac) = match text.split_once('.') {
        Some((w, f)) => (w, f),
        None => (text, ""),
    };
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && frac.is_empty()) || !all_digits(whole) || !all_digits(frac) {
        return Err(AmountInputError::Malformed);
    }
    if frac.len() > digits as usize {
        return Err(AmountInputError::TooPrecise(digits));
    }
    let mut minor: i64 = 0;
    let padded = frac
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(digits as usize);
    for b in whole.bytes().chain(padded) {
        minor = minor
            .checked_mul(10)
            .and_then(|m| m.checked_add(i64::from(b - b'0')))
            .ok_or(AmountInputError::TooLarge)?;
    }
    Ok(minor)
}

/// Unix seconds as RFC 3339 UTC, `2026-12-07T17:40:05Z` (the `datetime` of a `<time>`).
pub fn rfc3339(secs: u64) -> String {
    let tod = secs % 86_400;
    format!(
        "{}T{:02}:{:02}:{:02}Z",
        format_day(secs / 86_400),
        tod / 3600,
        tod % 3600 / 60,
        tod % 60
    )
}

/// Unix seconds as the text shown before console.js localises it: `2026-12-07 17:40 UTC`.
pub fn utc_text(secs: u64) -> String {
    let tod = secs % 86_400;
    format!(
        "{} {:02}:{:02} UTC",
        format_day(secs / 86_400),
        tod / 3600,
        tod % 3600 / 60
    )
}

/// An AT+CSQ `<rssi>` as dBm text (`-113 + 2 × rssi`), or "unknown" for 99.
pub fn signal(csq: u32) -> String {
    if csq <= 31 {
        format!("{} dBm (CSQ {csq})", -113 + 2 * i64::from(csq))
    } else {
        "unknown".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn money_in_the_currency_digits() {
        assert_eq!(money(1234, "EUR"), "12.34 EUR");
        assert_eq!(money(5, "EUR"), "0.05 EUR");
        assert_eq!(money(-5, "EUR"), "-0.05 EUR");
        assert_eq!(money(0, "USD"), "0.00 USD");
        assert_eq!(money(500, "JPY"), "500 JPY");
        assert_eq!(money(1_005, "KWD"), "1.005 KWD");
        assert_eq!(money(i64::MIN, "EUR"), "-92233720368547758.08 EUR");
    }

    #[test]
    fn amounts_typed_in_major_units() {
        assert_eq!(parse_amount("1.50", 2), Ok(150));
        assert_eq!(parse_amount("1.5", 2), Ok(150));
        assert_eq!(parse_amount(" 12 ", 2), Ok(1200));
        assert_eq!(parse_amount(".25", 2), Ok(25));
        assert_eq!(parse_amount("300", 0), Ok(300));
        assert_eq!(parse_amount("1.5", 0), Err(AmountInputError::TooPrecise(0)));
        assert_eq!(
            parse_amount("1.505", 2),
            Err(AmountInputError::TooPrecise(2))
        );
        for bad in ["", ".", "-1", "1e3", "1,50", "+1", "1.2.3", "abc", "١"] {
            assert_eq!(
                parse_amount(bad, 2),
                Err(AmountInputError::Malformed),
                "{bad}"
            );
        }
        assert_eq!(
            parse_amount("92233720368547758.08", 2),
            Err(AmountInputError::TooLarge)
        );
        assert_eq!(parse_amount("92233720368547758.07", 2), Ok(i64::MAX));
    }

    #[test]
    fn times_in_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_796_665_205), "2026-12-07T17:40:05Z");
        assert_eq!(utc_text(1_796_665_205), "2026-12-07 17:40 UTC");
        assert_eq!(signal(0), "-113 dBm (CSQ 0)");
        assert_eq!(signal(31), "-51 dBm (CSQ 31)");
        assert_eq!(signal(99), "unknown");
    }

    proptest! {
        /// What `money` shows, typed back, is the same number of minor units.
        #[test]
        fn shown_amounts_parse_back(minor in 0i64..=i64::MAX, cur in prop::sample::select(vec!["EUR", "JPY", "KWD"])) {
            let shown = money(minor, cur);
            let number = shown.split(' ').next().unwrap_or_default();
            prop_assert_eq!(parse_amount(number, minor_digits(cur)), Ok(minor));
        }

        /// Any text: an amount or an error, never a panic.
        #[test]
        fn any_text_is_an_amount_or_an_error(s in ".{0,40}", digits in 0u32..4) {
            let _ = parse_amount(&s, digits);
        }
    }
}
