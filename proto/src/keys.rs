//! Secret key types and the device-key derivation.
//!
//! `device_key = HMAC-SHA256(master_key, "blepay/v1/device-key" || key_version (1 byte) || device_id (8 bytes) [|| key_epoch (4 bytes)])`
//! — the epoch bytes only for epochs above 0, so epoch 0 is the key every device had before
//! epochs existed (docs/protocol.md §1). A rotated key reaches the machine wrapped under its
//! current key ([`wrap_device_key`]).

use alloc::string::String;
use core::fmt;

use blepay_core::{DeviceId, KeyEpoch, KeyVersion};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop};

pub(crate) type HmacSha256 = Hmac<Sha256>;

/// Domain separation label of the device-key derivation.
pub const DEVICE_KEY_LABEL: &[u8] = b"blepay/v1/device-key";

/// Domain separation label of the key wrap (a rotated key carried in an answer frame).
pub const KEY_WRAP_LABEL: &[u8] = b"blepay/v1/key-wrap";

/// Why a hex key could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyParseError {
    /// The text is not exactly 64 characters long.
    #[error("a key is 64 hex characters, got {len}")]
    WrongLength {
        /// The length that was given.
        len: usize,
    },
    /// The text has characters other than `0-9a-fA-F`.
    #[error("a key must be hexadecimal")]
    NotHex,
}

fn parse_key_hex(s: &str) -> Result<[u8; 32], KeyParseError> {
    let s = s.trim();
    if s.len() != 64 {
        return Err(KeyParseError::WrongLength { len: s.len() });
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).map_err(|_| KeyParseError::NotHex)?;
    Ok(out)
}

macro_rules! secret_key {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone)]
        pub struct $name([u8; 32]);

        impl $name {
            /// Wraps 32 raw key bytes.
            pub const fn from_bytes(bytes: [u8; 32]) -> Self {
                Self(bytes)
            }

            /// Parses 64 hex characters (surrounding whitespace is ignored).
            ///
            /// # Errors
            /// [`KeyParseError`] when the text is not exactly 64 hex characters.
            pub fn parse_hex(s: &str) -> Result<Self, KeyParseError> {
                parse_key_hex(s).map(Self)
            }

            /// The raw key bytes. The name is loud on purpose: every call is a place the
            /// secret leaves its box.
            pub const fn expose_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// The key as 64 lowercase hex characters (for provisioning output only).
            pub fn expose_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl Drop for $name {
            fn drop(&mut self) {
                self.0.zeroize();
            }
        }

        impl ZeroizeOnDrop for $name {}

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "(<redacted>)"))
            }
        }

        impl core::str::FromStr for $name {
            type Err = KeyParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse_hex(s)
            }
        }
    };
}

secret_key!(
    /// A 32-byte server master key (one per key version, 0..=15). Only the server knows it.
    MasterKey
);
secret_key!(
    /// A machine's 32-byte key, derived from a master key; provisioned into one machine.
    DeviceKey
);

/// A keyed HMAC-SHA256. HMAC zero-pads keys shorter than the 64-byte SHA-256 block (RFC 2104),
/// so padding here is the same HMAC and keeps this infallible (no `new_from_slice` result).
pub(crate) fn hmac_with(key: &[u8; 32]) -> HmacSha256 {
    let mut block: [u8; 64] = crate::bytes::concat(&[key]);
    let mac = <HmacSha256 as hmac::digest::KeyInit>::new((&block).into());
    block.zeroize();
    mac
}

/// Derives a machine's key at key epoch `epoch`:
/// `HMAC-SHA256(master, "blepay/v1/device-key" || key_version (1 byte) || device_id (8 bytes)
/// [|| epoch (4 bytes, big-endian)])`. The epoch bytes are appended only for epochs above 0, so
/// epoch 0 derives the key devices were provisioned with before epochs existed. A pure function.
pub fn derive_device_key(
    master: &MasterKey,
    version: KeyVersion,
    device: DeviceId,
    epoch: KeyEpoch,
) -> DeviceKey {
    let mut mac = hmac_with(master.expose_bytes());
    mac.update(DEVICE_KEY_LABEL);
    mac.update(&[version.get()]);
    mac.update(device.as_bytes());
    if epoch != KeyEpoch::FIRST {
        mac.update(&epoch.get().to_be_bytes());
    }
    DeviceKey(mac.finalize().into_bytes().into())
}

/// The pad that wraps the key of epoch `epoch` under the device's current key:
/// `HMAC-SHA256(current, "blepay/v1/key-wrap" || epoch (4 bytes) || device_id (8 bytes))`.
fn wrap_pad(current: &DeviceKey, device: DeviceId, epoch: KeyEpoch) -> [u8; 32] {
    let mut mac = hmac_with(current.expose_bytes());
    mac.update(KEY_WRAP_LABEL);
    mac.update(&epoch.get().to_be_bytes());
    mac.update(device.as_bytes());
    mac.finalize().into_bytes().into()
}

/// Wraps `next` (the key of epoch `epoch`) so only the holder of `current` can recover it:
/// `next XOR HMAC-SHA256(current, "blepay/v1/key-wrap" || epoch (4 bytes) || device_id)`. The pad
/// is used for one key only (it depends on the epoch), and the answer frame that carries the
/// wrapped key is tagged under `current`, which authenticates it.
pub fn wrap_device_key(
    current: &DeviceKey,
    device: DeviceId,
    epoch: KeyEpoch,
    next: &DeviceKey,
) -> [u8; 32] {
    let mut pad = wrap_pad(current, device, epoch);
    let mut out = [0u8; 32];
    for ((o, p), k) in out
        .iter_mut()
        .zip(pad.iter())
        .zip(next.expose_bytes().iter())
    {
        *o = p ^ k;
    }
    pad.zeroize();
    out
}

/// Recovers the key of epoch `epoch` from `wrapped` with the device's current key (the inverse
/// of [`wrap_device_key`]).
pub fn unwrap_device_key(
    current: &DeviceKey,
    device: DeviceId,
    epoch: KeyEpoch,
    wrapped: &[u8; 32],
) -> DeviceKey {
    let mut pad = wrap_pad(current, device, epoch);
    let mut out = [0u8; 32];
    for ((o, p), w) in out.iter_mut().zip(pad.iter()).zip(wrapped.iter()) {
        *o = p ^ w;
    }
    pad.zeroize();
    DeviceKey(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_master() -> MasterKey {
        let mut b = [0u8; 32];
        for (i, x) in (0u8..).zip(b.iter_mut()) {
            *x = i;
        }
        MasterKey::from_bytes(b)
    }

    #[test]
    fn the_device_key_matches_the_published_vector() {
        let key = derive_device_key(
            &test_master(),
            KeyVersion::new(0).unwrap(),
            DeviceId::from_bytes([1, 2, 3, 4, 5, 6, 7, 8]),
            KeyEpoch::FIRST,
        );
        assert_eq!(
            key.expose_hex(),
            "e74bd0e5e3891556ff6dff5fcebc44eab49aaa2152d9ced22bb6141a5f237a82"
        );
    }

    #[test]
    fn different_versions_and_devices_get_different_keys() {
        let master = test_master();
        let device = DeviceId::from_bytes([1, 2, 3, 4, 5, 6, 7, 8]);
        let e0 = KeyEpoch::FIRST;
        let v0 = derive_device_key(&master, KeyVersion::new(0).unwrap(), device, e0);
        let v1 = derive_device_key(&master, KeyVersion::new(1).unwrap(), device, e0);
        let other = derive_device_key(
            &master,
            KeyVersion::new(0).unwrap(),
            DeviceId::from_bytes([0; 8]),
            e0,
        );
        let e1 = derive_device_key(
            &master,
            KeyVersion::new(0).unwrap(),
            device,
            KeyEpoch::new(1),
        );
        assert_ne!(v0.expose_bytes(), v1.expose_bytes());
        assert_ne!(v0.expose_bytes(), other.expose_bytes());
        assert_ne!(v0.expose_bytes(), e1.expose_bytes());
    }

    #[test]
    fn a_wrapped_key_unwraps_only_with_the_current_key() {
        let master = test_master();
        let device = DeviceId::from_bytes([1, 2, 3, 4, 5, 6, 7, 8]);
        let v = KeyVersion::new(0).unwrap();
        let current = derive_device_key(&master, v, device, KeyEpoch::FIRST);
        let next = derive_device_key(&master, v, device, KeyEpoch::new(1));
        let wrapped = wrap_device_key(&current, device, KeyEpoch::new(1), &next);
        assert_ne!(&wrapped, next.expose_bytes());
        let back = unwrap_device_key(&current, device, KeyEpoch::new(1), &wrapped);
        assert_eq!(back.expose_bytes(), next.expose_bytes());
        let wrong = unwrap_device_key(&next, device, KeyEpoch::new(1), &wrapped);
        assert_ne!(wrong.expose_bytes(), next.expose_bytes());
    }

    #[test]
    fn keys_never_print_their_bytes() {
        let k = DeviceKey::from_bytes([0xab; 32]);
        assert_eq!(format!("{k:?}"), "DeviceKey(<redacted>)");
        assert_eq!(format!("{:?}", test_master()), "MasterKey(<redacted>)");
    }

    #[test]
    fn hex_keys_parse_and_reject_bad_input() {
        let hex = "e74bd0e5e3891556ff6dff5fcebc44eab49aaa2152d9ced22bb6141a5f237a82";
        assert_eq!(DeviceKey::parse_hex(hex).unwrap().expose_hex(), hex);
        assert_eq!(
            DeviceKey::parse_hex(&hex.to_uppercase())
                .unwrap()
                .expose_hex(),
            hex
        );
        assert_eq!(
            DeviceKey::parse_hex("abcd").unwrap_err(),
            KeyParseError::WrongLength { len: 4 }
        );
        assert_eq!(
            MasterKey::parse_hex(&"zz".repeat(32)).unwrap_err(),
            KeyParseError::NotHex
        );
    }
}
