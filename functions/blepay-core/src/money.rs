//! Money: integer minor units with checked arithmetic. Never floats.

use alloc::string::{String, ToString};
use core::fmt;

/// Why an amount, currency, unit name or tariff was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("amount must be between 0 and {max} minor units", max = Amount::MAX.0)]
    OutOfRange,
    #[error("amount must be positive")]
    NotPositive,
    #[error("arithmetic overflow")]
    Overflow,
    #[error("currency must be three uppercase ASCII letters (ISO 4217)")]
    BadCurrency,
    #[error("unit name must be 1..=16 printable characters")]
    BadUnitName,
}

/// A non-negative amount of money in minor units (cents), at most [`Amount::MAX`].
///
/// The bound (10^15 minor units) keeps every sum the ledger forms far from `i64` overflow, and every
/// operation is still checked.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Amount(i64);

impl Amount {
    pub const ZERO: Self = Self(0);
    pub const MAX: Self = Self(1_000_000_000_000_000);

    /// # Errors
    /// When `minor` is negative or above [`Amount::MAX`].
    pub const fn new(minor: i64) -> Result<Self, MoneyError> {
        if minor < 0 || minor > Self::MAX.0 {
            Err(MoneyError::OutOfRange)
        } else {
            Ok(Self(minor))
        }
    }

    /// Like [`Amount::new`], but zero is refused too.
    ///
    /// # Errors
    /// When `minor` is not in `1..=MAX`.
    pub const fn positive(minor: i64) -> Result<Self, MoneyError> {
        if minor == 0 {
            return Err(MoneyError::NotPositive);
        }
        Self::new(minor)
    }

    pub const fn minor(self) -> i64 {
        self.0
    }

    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// # Errors
    /// When the sum exceeds [`Amount::MAX`].
    pub const fn checked_add(self, other: Self) -> Result<Self, MoneyError> {
        match self.0.checked_add(other.0) {
            Some(v) if v <= Self::MAX.0 => Ok(Self(v)),
            _ => Err(MoneyError::Overflow),
        }
    }

    /// # Errors
    /// When `other > self`.
    pub const fn checked_sub(self, other: Self) -> Result<Self, MoneyError> {
        if other.0 > self.0 {
            Err(MoneyError::Overflow)
        } else {
            Ok(Self(self.0 - other.0))
        }
    }

    #[must_use]
    pub fn min(self, other: Self) -> Self {
        Ord::min(self, other)
    }
}

impl fmt::Debug for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Amount({})", self.0)
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A count of the machine's units (litres, seconds, vends...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Units(u64);

impl Units {
    pub const ZERO: Self = Self(0);
    pub const fn new(v: u64) -> Self {
        Self(v)
    }
    pub const fn get(self) -> u64 {
        self.0
    }
}

/// An ISO 4217 currency code: three uppercase ASCII letters.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency([u8; 3]);

impl Currency {
    /// # Errors
    /// When `s` is not three uppercase ASCII letters.
    pub fn parse(s: &str) -> Result<Self, MoneyError> {
        let b = s.as_bytes();
        match b {
            [a, b, c] if [a, b, c].iter().all(|x| x.is_ascii_uppercase()) => Ok(Self([*a, *b, *c])),
            _ => Err(MoneyError::BadCurrency),
        }
    }
    pub fn as_str(&self) -> &str {
        // Only ASCII uppercase letters are ever stored.
        core::str::from_utf8(&self.0).unwrap_or("XXX")
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Currency({})", self.as_str())
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the machine sells in: "litre", "minute", "vend". 1..=16 printable characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UnitName(String);

impl UnitName {
    pub const MAX_LEN: usize = 16;
    /// # Errors
    /// When empty, too long, or containing control characters.
    pub fn parse(s: &str) -> Result<Self, MoneyError> {
        if s.is_empty() || s.chars().count() > Self::MAX_LEN || s.chars().any(char::is_control) {
            return Err(MoneyError::BadUnitName);
        }
        Ok(Self(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A machine's price: `price_per_unit` minor units of `currency` per `unit_name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tariff {
    pub price_per_unit: Amount,
    pub unit_name: UnitName,
    pub currency: Currency,
}

impl Tariff {
    /// The price of `units`, or `None` when it would exceed [`Amount::MAX`].
    pub fn cost(&self, units: Units) -> Option<Amount> {
        let units = i64::try_from(units.get()).ok()?;
        let v = self.price_per_unit.minor().checked_mul(units)?;
        Amount::new(v).ok()
    }

    /// What a session with `hold` captures for `units`: `min(units x price, hold)`.
    pub fn capture_for(&self, units: Units, hold: Amount) -> Amount {
        self.cost(units).map_or(hold, |c| c.min(hold))
    }

    /// How many whole units `hold` pays for (the machine stops dispensing there).
    pub fn units_for(&self, hold: Amount) -> Units {
        units_for_hold(hold, self.price_per_unit)
    }
}

/// How many whole units `hold` pays for at `price_per_unit`: `floor(hold / price)`, zero for a
/// non-positive price. The one rule both the server ([`Tariff::units_for`]) and the machine (its
/// dispensing cap) use.
pub fn units_for_hold(hold: Amount, price_per_unit: Amount) -> Units {
    let price = price_per_unit.minor();
    if price <= 0 {
        return Units::ZERO;
    }
    Units::new(u64::try_from(hold.minor() / price).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tariff(price: i64) -> Tariff {
        Tariff {
            price_per_unit: Amount::positive(price).unwrap(),
            unit_name: UnitName::parse("litre").unwrap(),
            currency: Currency::parse("EUR").unwrap(),
        }
    }

    #[test]
    fn amounts_refuse_negative_and_huge_values() {
        assert_eq!(Amount::new(-1), Err(MoneyError::OutOfRange));
        assert_eq!(
            Amount::new(Amount::MAX.minor() + 1),
            Err(MoneyError::OutOfRange)
        );
        assert_eq!(Amount::positive(0), Err(MoneyError::NotPositive));
    }

    #[test]
    fn capture_is_the_cost_capped_at_the_hold() {
        let t = tariff(25);
        let hold = Amount::new(100).unwrap();
        assert_eq!(t.capture_for(Units::new(3), hold).minor(), 75);
        assert_eq!(t.capture_for(Units::new(5), hold).minor(), 100);
        assert_eq!(t.capture_for(Units::new(u64::MAX), hold).minor(), 100);
        assert_eq!(t.units_for(hold).get(), 4);
    }

    #[test]
    fn currencies_are_iso_codes() {
        assert!(Currency::parse("EUR").is_ok());
        assert!(Currency::parse("eur").is_err());
        assert!(Currency::parse("EURO").is_err());
    }

    proptest! {
        #[test]
        fn capture_never_exceeds_hold_or_cost(price in 1i64..1_000_000, units in any::<u64>(), hold in 0i64..1_000_000_000) {
            let t = tariff(price);
            let hold = Amount::new(hold).unwrap();
            let c = t.capture_for(Units::new(units), hold);
            prop_assert!(c <= hold);
            if let Some(cost) = t.cost(Units::new(units)) {
                prop_assert!(c <= cost);
            }
        }

        #[test]
        fn add_then_sub_is_identity(a in 0i64..=Amount::MAX.minor(), b in 0i64..=Amount::MAX.minor()) {
            let (a, b) = (Amount::new(a).unwrap(), Amount::new(b).unwrap());
            if let Ok(s) = a.checked_add(b) {
                prop_assert_eq!(s.checked_sub(b).unwrap(), a);
            }
        }
    }
}
