//! The 24-byte BLE advert a machine broadcasts, and the advertising data around it.
//!
//! Layout (integers big-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | high nibble: format version = 1; low nibble: `key_version` |
//! | 1 | 8 | `device_id` |
//! | 9 | 4 | slot = `floor(device_unix_seconds / 30)` |
//! | 13 | 2 | `use_counter` |
//! | 15 | 1 | flags: bit0 busy, bit1 fault, bit2 clock not synchronised, bit3 link down; other bits 0 |
//! | 16 | 8 | tag = first 8 bytes of HMAC-SHA256(device_key, "blepay/v1/advert" \|\| payload[0..16]) |
//!
//! [`Advert::parse`] checks structure only; [`Advert::verify`] checks the tag in constant time.

use blepay_core::{DeviceId, KeyVersion, Slot, UseCounter};
use hmac::Mac;

use crate::bytes::{Reader, concat};
use crate::keys::{DeviceKey, hmac_with};

/// The advert format version carried in the high nibble of byte 0.
pub const ADVERT_FORMAT_VERSION: u8 = 1;
/// Domain separation label of the advert tag.
pub const ADVERT_TAG_LABEL: &[u8] = b"blepay/v1/advert";
/// Bluetooth SIG company identifier used by default (0xFFFF: "no company, testing").
pub const DEFAULT_COMPANY_ID: u16 = 0xFFFF;
/// AD type "Flags".
const AD_TYPE_FLAGS: u8 = 0x01;
/// AD type "Manufacturer Specific Data".
const AD_TYPE_MANUFACTURER: u8 = 0xFF;
/// Flags AD value: LE General Discoverable Mode, BR/EDR not supported.
const AD_FLAGS_VALUE: u8 = 0x06;

/// Why advert bytes were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AdvertError {
    /// The payload is not exactly 24 bytes.
    #[error("an advert payload is 24 bytes, got {len}")]
    WrongLength {
        /// The length that was given.
        len: usize,
    },
    /// The high nibble of byte 0 is not format version 1.
    #[error("unsupported advert format version {0}")]
    UnsupportedVersion(u8),
    /// A flag bit other than bits 0..=3 is set.
    #[error("reserved advert flag bits set: {0:#04x}")]
    ReservedFlags(u8),
    /// The tag does not match the device key.
    #[error("advert tag does not verify")]
    BadTag,
    /// No blepay manufacturer data with that company id in the advertising data.
    #[error("no blepay advert in the advertising data")]
    NotFound,
}

/// The flags byte of an advert. Only bits 0..=3 are defined; the others must be zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct AdvertFlags(u8);

impl AdvertFlags {
    /// No flag set: idle, healthy, clock synchronised.
    pub const NONE: Self = Self(0);
    /// Bit 0: a session is in progress.
    pub const BUSY: Self = Self(0b001);
    /// Bit 1: the machine reports a fault.
    pub const FAULT: Self = Self(0b010);
    /// Bit 2: the machine has not synchronised its clock with the server yet.
    pub const CLOCK_UNSYNCED: Self = Self(0b100);
    /// Bit 3: the machine's modem is not attached or its last exchange with the server failed,
    /// so it cannot fetch a grant: the server treats it as OFFLINE.
    pub const LINK_DOWN: Self = Self(0b1000);
    /// All defined bits.
    pub const ALL: Self = Self(0b1111);

    /// # Errors
    /// [`AdvertError::ReservedFlags`] when a bit outside 0..=3 is set.
    pub const fn from_bits(bits: u8) -> Result<Self, AdvertError> {
        if bits & !Self::ALL.0 != 0 {
            Err(AdvertError::ReservedFlags(bits))
        } else {
            Ok(Self(bits))
        }
    }

    pub const fn bits(self) -> u8 {
        self.0
    }

    /// True when every bit of `other` is set in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// `self` with the bits of `other` added.
    #[must_use]
    pub const fn with(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

impl core::ops::BitOr for AdvertFlags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        self.with(rhs)
    }
}

/// A parsed (structurally valid) advert. Its tag is only trusted after [`Advert::verify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Advert {
    pub key_version: KeyVersion,
    pub device_id: DeviceId,
    pub slot: Slot,
    pub use_counter: UseCounter,
    pub flags: AdvertFlags,
    pub tag: [u8; 8],
}

impl Advert {
    /// Length of the payload in bytes.
    pub const LEN: usize = 24;
    /// Length of the legacy advertising data built by [`Advert::advertising_data`].
    pub const ADVERTISING_DATA_LEN: usize = 31;
    /// Length of the HCI command built by [`Advert::hci_le_set_advertising_data`].
    pub const HCI_COMMAND_LEN: usize = 36;

    /// Parses the 24-byte payload. Checks structure only (length, version, reserved flags);
    /// call [`Advert::verify`] before trusting it.
    ///
    /// # Errors
    /// [`AdvertError::WrongLength`], [`AdvertError::UnsupportedVersion`],
    /// [`AdvertError::ReservedFlags`].
    pub fn parse(bytes: &[u8]) -> Result<Self, AdvertError> {
        let wrong = AdvertError::WrongLength { len: bytes.len() };
        if bytes.len() != Self::LEN {
            return Err(wrong);
        }
        let mut r = Reader::new(bytes);
        let header = r.u8().ok_or(wrong)?;
        let device_id = r.array::<8>().ok_or(wrong)?;
        let slot = r.array::<4>().ok_or(wrong)?;
        let use_counter = r.array::<2>().ok_or(wrong)?;
        let flags = r.u8().ok_or(wrong)?;
        let tag = r.array::<8>().ok_or(wrong)?;

        let version = header >> 4;
        if version != ADVERT_FORMAT_VERSION {
            return Err(AdvertError::UnsupportedVersion(version));
        }
        let key_version =
            KeyVersion::new(header & 0x0f).map_err(|_| AdvertError::UnsupportedVersion(version))?;
        Ok(Self {
            key_version,
            device_id: DeviceId::from_bytes(device_id),
            slot: Slot::new(u32::from_be_bytes(slot)),
            use_counter: UseCounter::new(u16::from_be_bytes(use_counter)),
            flags: AdvertFlags::from_bits(flags)?,
            tag,
        })
    }

    /// Builds and tags an advert with the machine's key.
    pub fn sign(
        key: &DeviceKey,
        key_version: KeyVersion,
        device_id: DeviceId,
        slot: Slot,
        use_counter: UseCounter,
        flags: AdvertFlags,
    ) -> Self {
        let mut advert = Self {
            key_version,
            device_id,
            slot,
            use_counter,
            flags,
            tag: [0; 8],
        };
        advert.tag = compute_tag(key, &advert.signed_part());
        advert
    }

    /// Bytes 0..16: everything the tag covers.
    fn signed_part(&self) -> [u8; 16] {
        concat(&[
            &[(ADVERT_FORMAT_VERSION << 4) | self.key_version.get()],
            self.device_id.as_bytes(),
            &self.slot.get().to_be_bytes(),
            &self.use_counter.get().to_be_bytes(),
            &[self.flags.bits()],
        ])
    }

    /// The 24-byte payload.
    pub fn encode(&self) -> [u8; 24] {
        concat(&[&self.signed_part(), &self.tag])
    }

    /// Checks the tag against `key`, in constant time.
    ///
    /// # Errors
    /// [`AdvertError::BadTag`] when the tag does not match.
    pub fn verify(&self, key: &DeviceKey) -> Result<(), AdvertError> {
        let mut mac = hmac_with(key.expose_bytes());
        mac.update(ADVERT_TAG_LABEL);
        mac.update(&self.signed_part());
        mac.verify_truncated_left(&self.tag)
            .map_err(|_| AdvertError::BadTag)
    }

    /// The 31-byte legacy advertising data: a Flags AD (`02 01 06`) and a Manufacturer
    /// Specific Data AD (`1B FF`, company id little-endian, the 24-byte payload).
    pub fn advertising_data(&self, company_id: u16) -> [u8; 31] {
        let len = u8::try_from(1 + 2 + Self::LEN).unwrap_or(u8::MAX);
        concat(&[
            &[2, AD_TYPE_FLAGS, AD_FLAGS_VALUE, len, AD_TYPE_MANUFACTURER],
            &company_id.to_le_bytes(),
            &self.encode(),
        ])
    }

    /// Finds and parses the blepay advert in advertising data (or a scan response): walks the
    /// AD structures (`length, type, data`) and takes the first Manufacturer Specific Data AD
    /// with `company_id`. Stops at a zero length (the rest is padding). Does not verify.
    ///
    /// # Errors
    /// [`AdvertError::NotFound`] when there is none (or the AD structures are truncated);
    /// the errors of [`Advert::parse`] when the one found is malformed.
    pub fn from_advertising_data(data: &[u8], company_id: u16) -> Result<Self, AdvertError> {
        let mut r = Reader::new(data);
        while let Some(len) = r.u8() {
            if len == 0 {
                break;
            }
            let Some(ad) = r.slice(usize::from(len)) else {
                break;
            };
            let mut ad = Reader::new(ad);
            if ad.u8() != Some(AD_TYPE_MANUFACTURER) {
                continue;
            }
            if ad.array::<2>().map(u16::from_le_bytes) != Some(company_id) {
                continue;
            }
            return Self::parse(ad.rest());
        }
        Err(AdvertError::NotFound)
    }

    /// The HCI command packet `LE Set Advertising Data` (OGF 0x08, OCF 0x0008) carrying
    /// [`Advert::advertising_data`]: `01 08 20 20 1F` + 31 bytes, for writing straight to an
    /// HCI UART (H4) controller.
    pub fn hci_le_set_advertising_data(&self, company_id: u16) -> [u8; 36] {
        const PACKET_TYPE_COMMAND: u8 = 0x01;
        const OPCODE: u16 = 0x2008;
        const PARAMETER_LEN: u8 = 0x20;
        const AD_LEN: u8 = 31;
        let opcode = OPCODE.to_le_bytes();
        concat(&[
            &[PACKET_TYPE_COMMAND],
            &opcode,
            &[PARAMETER_LEN, AD_LEN],
            &self.advertising_data(company_id),
        ])
    }
}

fn compute_tag(key: &DeviceKey, signed: &[u8; 16]) -> [u8; 8] {
    let mut mac = hmac_with(key.expose_bytes());
    mac.update(ADVERT_TAG_LABEL);
    mac.update(signed);
    concat(&[&mac.finalize().into_bytes()])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{MasterKey, derive_device_key};
    use proptest::prelude::*;

    fn vector_key() -> DeviceKey {
        let mut b = [0u8; 32];
        for (i, x) in (0u8..).zip(b.iter_mut()) {
            *x = i;
        }
        derive_device_key(
            &MasterKey::from_bytes(b),
            KeyVersion::new(0).unwrap(),
            DeviceId::from_bytes([1, 2, 3, 4, 5, 6, 7, 8]),
            blepay_core::KeyEpoch::FIRST,
        )
    }

    fn vector_advert() -> Advert {
        Advert::sign(
            &vector_key(),
            KeyVersion::new(0).unwrap(),
            DeviceId::from_bytes([1, 2, 3, 4, 5, 6, 7, 8]),
            Slot::new(59_000_000),
            UseCounter::new(7),
            AdvertFlags::NONE,
        )
    }

    const VECTOR_PAYLOAD: &str = "100102030405060708038444c0000700bb26231d83eba4fb";

    #[test]
    fn the_advert_matches_the_published_vector() {
        assert_eq!(hex::encode(vector_advert().encode()), VECTOR_PAYLOAD);
    }

    #[test]
    fn a_signed_advert_round_trips_and_verifies() {
        let a = vector_advert();
        let parsed = Advert::parse(&a.encode()).unwrap();
        assert_eq!(parsed, a);
        parsed.verify(&vector_key()).unwrap();
        assert_eq!(parsed.key_version.get(), 0);
        assert_eq!(parsed.slot.get(), 59_000_000);
        assert_eq!(parsed.use_counter.get(), 7);
    }

    #[test]
    fn every_single_bit_flip_is_refused() {
        let bytes = vector_advert().encode();
        let key = vector_key();
        for i in 0..bytes.len() * 8 {
            let mut b = bytes;
            b[i / 8] ^= 1 << (i % 8);
            let outcome = Advert::parse(&b).and_then(|a| a.verify(&key));
            assert!(outcome.is_err(), "flip of bit {i} was accepted");
        }
    }

    #[test]
    fn a_wrong_key_is_refused() {
        let a = vector_advert();
        assert_eq!(
            a.verify(&DeviceKey::from_bytes([7; 32])),
            Err(AdvertError::BadTag)
        );
    }

    #[test]
    fn reserved_flags_and_wrong_versions_and_lengths_are_refused() {
        assert_eq!(
            AdvertFlags::from_bits(0x10),
            Err(AdvertError::ReservedFlags(0x10))
        );
        let mut b = vector_advert().encode();
        b[15] = 0x80;
        assert_eq!(Advert::parse(&b), Err(AdvertError::ReservedFlags(0x80)));
        let mut b = vector_advert().encode();
        b[0] = 0x20;
        assert_eq!(Advert::parse(&b), Err(AdvertError::UnsupportedVersion(2)));
        assert_eq!(
            Advert::parse(&[0; 23]),
            Err(AdvertError::WrongLength { len: 23 })
        );
    }

    #[test]
    fn flags_combine_and_are_reported() {
        let f = AdvertFlags::BUSY | AdvertFlags::CLOCK_UNSYNCED;
        assert_eq!(f.bits(), 0b101);
        assert!(f.contains(AdvertFlags::BUSY));
        assert!(!f.contains(AdvertFlags::FAULT));
        assert_eq!(AdvertFlags::from_bits(15), Ok(AdvertFlags::ALL));
        assert!(AdvertFlags::ALL.contains(AdvertFlags::LINK_DOWN));
    }

    #[test]
    fn advertising_data_is_flags_then_manufacturer_data() {
        let a = vector_advert();
        let ad = a.advertising_data(DEFAULT_COMPANY_ID);
        assert_eq!(
            hex::encode(ad),
            format!("020106 1bff ffff {VECTOR_PAYLOAD}").replace(' ', "")
        );
        let hci = a.hci_le_set_advertising_data(DEFAULT_COMPANY_ID);
        assert_eq!(&hci[..5], &[0x01, 0x08, 0x20, 0x20, 0x1f]);
        assert_eq!(&hci[5..], &ad[..]);
    }

    #[test]
    fn the_advert_is_found_among_other_ad_structures() {
        let a = vector_advert();
        let mut data = vec![0x02, 0x01, 0x06]; // flags
        data.extend([0x05, 0x09, b'W', b'a', b't', b'r']); // complete local name
        data.extend([0x05, 0xff, 0x4c, 0x00, 0xaa, 0xbb]); // another company's data
        data.extend([0x1b, 0xff, 0x34, 0x12]);
        data.extend(a.encode());
        data.extend([0, 0, 0]); // padding
        assert_eq!(Advert::from_advertising_data(&data, 0x1234), Ok(a));
        assert_eq!(
            Advert::from_advertising_data(&data, DEFAULT_COMPANY_ID),
            Err(AdvertError::NotFound)
        );
        assert_eq!(
            Advert::from_advertising_data(
                &a.advertising_data(DEFAULT_COMPANY_ID),
                DEFAULT_COMPANY_ID
            ),
            Ok(a)
        );
        // A truncated AD structure is not read past the end.
        assert_eq!(
            Advert::from_advertising_data(&[0x1b, 0xff, 0xff, 0xff, 1, 2], DEFAULT_COMPANY_ID),
            Err(AdvertError::NotFound)
        );
    }

    fn arb_advert() -> impl Strategy<Value = (Advert, [u8; 32])> {
        (
            0u8..=15,
            any::<[u8; 8]>(),
            any::<u32>(),
            any::<u16>(),
            0u8..=7,
            any::<[u8; 32]>(),
        )
            .prop_map(|(kv, id, slot, uc, flags, key)| {
                let a = Advert::sign(
                    &DeviceKey::from_bytes(key),
                    KeyVersion::new(kv).unwrap(),
                    DeviceId::from_bytes(id),
                    Slot::new(slot),
                    UseCounter::new(uc),
                    AdvertFlags::from_bits(flags).unwrap(),
                );
                (a, key)
            })
    }

    proptest! {
        #[test]
        fn parsing_random_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Advert::parse(&bytes);
            let _ = Advert::from_advertising_data(&bytes, DEFAULT_COMPANY_ID);
        }

        #[test]
        fn random_24_byte_payloads_never_panic(bytes in any::<[u8; 24]>(), company in any::<u16>()) {
            if let Ok(a) = Advert::parse(&bytes) {
                prop_assert_eq!(a.encode(), bytes);
                let _ = a.verify(&DeviceKey::from_bytes([0; 32]));
                let _ = Advert::from_advertising_data(&a.advertising_data(company), company);
            }
        }

        #[test]
        fn arbitrary_adverts_round_trip((a, key) in arb_advert(), company in any::<u16>()) {
            let parsed = Advert::parse(&a.encode()).unwrap();
            prop_assert_eq!(parsed, a);
            prop_assert!(parsed.verify(&DeviceKey::from_bytes(key)).is_ok());
            prop_assert_eq!(Advert::from_advertising_data(&a.advertising_data(company), company), Ok(a));
        }
    }
}
