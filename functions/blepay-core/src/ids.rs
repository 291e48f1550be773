//! Identifiers, parsed once at the boundary ("parse, don't validate").

use alloc::string::{String, ToString};
use core::fmt;
use core::str::FromStr;

/// Why an identifier could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdParseError {
    #[error("expected {expected} hex characters")]
    HexLength { expected: usize },
    #[error("not hexadecimal")]
    NotHex,
    #[error("key version must be 0..=15")]
    KeyVersionRange,
    #[error("must be 1..={max} characters from [A-Za-z0-9._:@-]")]
    BadToken { max: usize },
    #[error("must be 1..={max} characters without control characters")]
    BadName { max: usize },
}

fn parse_hex<const N: usize>(s: &str) -> Result<[u8; N], IdParseError> {
    if s.len() != N * 2 {
        return Err(IdParseError::HexLength { expected: N * 2 });
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).map_err(|_| IdParseError::NotHex)?;
    Ok(out)
}

/// A machine's 8-byte identifier; written as 16 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId([u8; 8]);

impl DeviceId {
    pub const fn from_bytes(bytes: [u8; 8]) -> Self {
        Self(bytes)
    }
    pub const fn to_bytes(self) -> [u8; 8] {
        self.0
    }
    pub const fn as_bytes(&self) -> &[u8; 8] {
        &self.0
    }
    /// # Errors
    /// When `s` is not exactly 16 hex characters.
    pub fn parse(s: &str) -> Result<Self, IdParseError> {
        parse_hex::<8>(s).map(Self)
    }
}

impl FromStr for DeviceId {
    type Err = IdParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({self})")
    }
}

/// A session's 16-byte random identifier; written as 32 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId([u8; 16]);

impl SessionId {
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }
    pub const fn to_bytes(self) -> [u8; 16] {
        self.0
    }
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
    /// # Errors
    /// When `s` is not exactly 32 hex characters.
    pub fn parse(s: &str) -> Result<Self, IdParseError> {
        parse_hex::<16>(s).map(Self)
    }
}

impl FromStr for SessionId {
    type Err = IdParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

/// Master-key version, 0..=15 (the low nibble of an advert's first byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyVersion(u8);

impl KeyVersion {
    pub const MAX: u8 = 15;
    /// # Errors
    /// When `v > 15`.
    pub const fn new(v: u8) -> Result<Self, IdParseError> {
        if v > Self::MAX {
            Err(IdParseError::KeyVersionRange)
        } else {
            Ok(Self(v))
        }
    }
    pub const fn get(self) -> u8 {
        self.0
    }
}

impl fmt::Display for KeyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A device's key epoch: how many times its key was rotated. It enters the device-key
/// derivation (docs/protocol.md §1); epoch 0 (every device registered before epochs existed)
/// derives exactly the key the derivation without an epoch gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct KeyEpoch(u32);

impl KeyEpoch {
    /// The epoch of a freshly registered device.
    pub const FIRST: Self = Self(0);

    pub const fn new(v: u32) -> Self {
        Self(v)
    }

    pub const fn get(self) -> u32 {
        self.0
    }

    /// The epoch after this one, `None` once the u32 space is used up.
    pub const fn next(self) -> Option<Self> {
        match self.0.checked_add(1) {
            Some(v) => Some(Self(v)),
            None => None,
        }
    }
}

impl fmt::Display for KeyEpoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A 30-second time slot: `floor(unix_seconds / 30)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slot(u32);

impl Slot {
    pub const SECONDS: u64 = 30;
    pub const fn new(v: u32) -> Self {
        Self(v)
    }
    pub const fn get(self) -> u32 {
        self.0
    }
    /// The slot containing `unix_seconds` (saturating at `u32::MAX`, year 6053).
    pub const fn at(unix_seconds: u64) -> Self {
        let s = unix_seconds / Self::SECONDS;
        if s > u32::MAX as u64 {
            Self(u32::MAX)
        } else {
            #[allow(clippy::cast_possible_truncation)]
            Self(s as u32)
        }
    }
    /// True when `self` is within `tolerance` slots of `other`.
    pub const fn is_within(self, other: Slot, tolerance: u32) -> bool {
        self.0.abs_diff(other.0) <= tolerance
    }
}

/// The machine's use counter: +1 after every session, wrapping at 2^16.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UseCounter(u16);

impl UseCounter {
    pub const fn new(v: u16) -> Self {
        Self(v)
    }
    pub const fn get(self) -> u16 {
        self.0
    }
    #[must_use]
    pub const fn next(self) -> Self {
        Self(self.0.wrapping_add(1))
    }
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '@' | '-')
}

macro_rules! token_newtype {
    ($(#[$m:meta])* $name:ident, $max:expr) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub const MAX_LEN: usize = $max;
            /// # Errors
            /// When empty, longer than the maximum, or with characters outside `[A-Za-z0-9._:@-]`.
            pub fn parse(s: &str) -> Result<Self, IdParseError> {
                if s.is_empty() || s.len() > Self::MAX_LEN || !s.chars().all(is_token_char) {
                    return Err(IdParseError::BadToken { max: Self::MAX_LEN });
                }
                Ok(Self(s.to_string()))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }
    };
}

token_newtype!(
    /// A wallet owner's id (the JWT `sub`): 1..=128 characters from `[A-Za-z0-9._:@-]`.
    UserId,
    128
);
token_newtype!(
    /// A client-chosen key that makes a mutating request safe to retry: 1..=128 token characters.
    IdempotencyKey,
    128
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_id_round_trips_through_hex() {
        let id = DeviceId::parse("0102030405060708").unwrap();
        assert_eq!(id.to_bytes(), [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(id.to_string(), "0102030405060708");
    }

    #[test]
    fn device_id_rejects_wrong_length_and_non_hex() {
        assert_eq!(
            DeviceId::parse("01"),
            Err(IdParseError::HexLength { expected: 16 })
        );
        assert_eq!(
            DeviceId::parse("zz02030405060708"),
            Err(IdParseError::NotHex)
        );
    }

    #[test]
    fn key_version_is_a_nibble() {
        assert!(KeyVersion::new(15).is_ok());
        assert!(KeyVersion::new(16).is_err());
    }

    #[test]
    fn slots_are_thirty_seconds_and_compare_with_tolerance() {
        assert_eq!(Slot::at(1_770_000_000).get(), 59_000_000);
        assert!(Slot::new(10).is_within(Slot::new(11), 1));
        assert!(!Slot::new(10).is_within(Slot::new(12), 1));
    }

    #[test]
    fn user_ids_are_bounded_tokens() {
        assert!(UserId::parse("alice@example.com").is_ok());
        assert!(UserId::parse("").is_err());
        assert!(UserId::parse("a b").is_err());
        assert!(UserId::parse(&"x".repeat(129)).is_err());
    }

    proptest::proptest! {
        #[test]
        fn parsing_arbitrary_strings_never_panics(s in ".*") {
            let _ = DeviceId::parse(&s);
            let _ = SessionId::parse(&s);
            let _ = UserId::parse(&s);
        }
    }
}

/// A machine's display name: 1..=64 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeviceName(String);

impl DeviceName {
    pub const MAX_LEN: usize = 64;
    /// # Errors
    /// When empty, longer than 64 characters, or containing control characters.
    pub fn parse(s: &str) -> Result<Self, IdParseError> {
        if s.trim().is_empty()
            || s.chars().count() > Self::MAX_LEN
            || s.chars().any(char::is_control)
        {
            return Err(IdParseError::BadName { max: Self::MAX_LEN });
        }
        Ok(Self(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
