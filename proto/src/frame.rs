//! The authenticated machine↔server frames.
//!
//! SIM800-class modems stop at TLS 1.0, so frames authenticate themselves and stay safe over
//! plain HTTP. Both directions are tagged with the device key; the answer's tag covers the
//! request's tag, binding each answer to its request so an old answer cannot be replayed.
//!
//! Request (`n` bytes):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | `0x10 \| key_version` (high nibble: frame version 1) |
//! | 1 | 8 | `device_id` |
//! | 9 | 4 | seq, u32 big-endian, strictly increasing per device |
//! | 13 | n−29 | body: protobuf `blepay.v1.DeviceRequest` |
//! | n−16 | 16 | tag = first 16 bytes of HMAC-SHA256(device_key, "blepay/v1/device-req" \|\| frame[0..n−16]) |
//!
//! Response (`n` bytes):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | `0x10` |
//! | 1 | 4 | seq of the request answered, u32 big-endian |
//! | 5 | 8 | server unix time, u64 big-endian |
//! | 13 | n−29 | body: protobuf `blepay.v1.DeviceResponse` |
//! | n−16 | 16 | tag = first 16 bytes of HMAC-SHA256(device_key, "blepay/v1/device-resp" \|\| request_tag \|\| frame[0..n−16]) |

use alloc::vec::Vec;

use blepay_core::{DeviceId, KeyVersion};
use hmac::Mac;

use crate::bytes::{Reader, concat};
use crate::keys::{DeviceKey, HmacSha256, hmac_with};

/// The frame format version carried in the high nibble of byte 0.
pub const FRAME_VERSION: u8 = 1;
/// Domain separation label of the request tag.
pub const REQUEST_TAG_LABEL: &[u8] = b"blepay/v1/device-req";
/// Domain separation label of the response tag.
pub const RESPONSE_TAG_LABEL: &[u8] = b"blepay/v1/device-resp";
/// Length of a frame tag.
pub const TAG_LEN: usize = 16;
/// Length of the fixed header of both frames.
pub const HEADER_LEN: usize = 13;
/// Shortest frame: header and tag around an empty body.
pub const MIN_FRAME_LEN: usize = HEADER_LEN + TAG_LEN;
/// Longest frame either side accepts.
pub const MAX_FRAME_LEN: usize = 1024;
/// Longest body that fits in a frame.
pub const MAX_BODY_LEN: usize = MAX_FRAME_LEN - MIN_FRAME_LEN;

/// Why a frame was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Shorter than the 29-byte header and tag.
    #[error("frame too short: {len} bytes, at least 29 expected")]
    TooShort {
        /// The length that was given.
        len: usize,
    },
    /// Longer than 1024 bytes.
    #[error("frame too large: {len} bytes, at most 1024 allowed")]
    TooLarge {
        /// The length that was given.
        len: usize,
    },
    /// The high nibble of byte 0 is not frame version 1 (or a response's low nibble is set).
    #[error("unsupported frame version byte {0:#04x}")]
    UnsupportedVersion(u8),
    /// The tag does not match the device key (forged, corrupted, or keyed for another request).
    #[error("frame tag does not verify")]
    BadTag,
}

fn check_len(len: usize) -> Result<(), FrameError> {
    if len < MIN_FRAME_LEN {
        Err(FrameError::TooShort { len })
    } else if len > MAX_FRAME_LEN {
        Err(FrameError::TooLarge { len })
    } else {
        Ok(())
    }
}

/// Splits a length-checked frame into `(signed part, tag)`.
fn split_tag(bytes: &[u8]) -> Result<(&[u8], [u8; TAG_LEN]), FrameError> {
    let too_short = FrameError::TooShort { len: bytes.len() };
    let (signed, tag) = bytes.split_last_chunk::<TAG_LEN>().ok_or(too_short)?;
    Ok((signed, *tag))
}

fn request_mac(key: &DeviceKey, signed: &[u8]) -> HmacSha256 {
    let mut mac = hmac_with(key.expose_bytes());
    mac.update(REQUEST_TAG_LABEL);
    mac.update(signed);
    mac
}

fn response_mac(key: &DeviceKey, request_tag: &[u8; TAG_LEN], signed: &[u8]) -> HmacSha256 {
    let mut mac = hmac_with(key.expose_bytes());
    mac.update(RESPONSE_TAG_LABEL);
    mac.update(request_tag);
    mac.update(signed);
    mac
}

fn truncated(mac: HmacSha256) -> [u8; TAG_LEN] {
    concat(&[&mac.finalize().into_bytes()])
}

/// Builds a tagged request frame. Bodies longer than [`MAX_BODY_LEN`] give a frame the
/// server refuses with [`FrameError::TooLarge`].
pub fn seal_request(
    key: &DeviceKey,
    kv: KeyVersion,
    device: DeviceId,
    seq: u32,
    body: &[u8],
) -> Vec<u8> {
    let mut frame = Vec::with_capacity(MIN_FRAME_LEN + body.len());
    frame.push((FRAME_VERSION << 4) | kv.get());
    frame.extend_from_slice(device.as_bytes());
    frame.extend_from_slice(&seq.to_be_bytes());
    frame.extend_from_slice(body);
    let tag = truncated(request_mac(key, &frame));
    frame.extend_from_slice(&tag);
    frame
}

/// A structurally valid request frame, borrowed from the bytes it was parsed from. The server
/// looks the device key up by [`RequestFrame::device_id`] and [`RequestFrame::key_version`],
/// then must call [`RequestFrame::verify`] before trusting anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestFrame<'a> {
    bytes: &'a [u8],
    signed: &'a [u8],
    key_version: KeyVersion,
    device_id: DeviceId,
    seq: u32,
    body: &'a [u8],
    tag: [u8; TAG_LEN],
}

impl<'a> RequestFrame<'a> {
    /// Parses the structure of a request frame (length, version byte, fields). No crypto.
    ///
    /// # Errors
    /// [`FrameError::TooShort`], [`FrameError::TooLarge`], [`FrameError::UnsupportedVersion`].
    pub fn parse(bytes: &'a [u8]) -> Result<Self, FrameError> {
        check_len(bytes.len())?;
        let (signed, tag) = split_tag(bytes)?;
        let too_short = FrameError::TooShort { len: bytes.len() };
        let mut r = Reader::new(signed);
        let header = r.u8().ok_or(too_short)?;
        let device_id = r.array::<8>().ok_or(too_short)?;
        let seq = r.array::<4>().ok_or(too_short)?;
        if header >> 4 != FRAME_VERSION {
            return Err(FrameError::UnsupportedVersion(header));
        }
        let key_version =
            KeyVersion::new(header & 0x0f).map_err(|_| FrameError::UnsupportedVersion(header))?;
        Ok(Self {
            bytes,
            signed,
            key_version,
            device_id: DeviceId::from_bytes(device_id),
            seq: u32::from_be_bytes(seq),
            body: r.rest(),
            tag,
        })
    }

    pub const fn key_version(&self) -> KeyVersion {
        self.key_version
    }

    pub const fn device_id(&self) -> DeviceId {
        self.device_id
    }

    pub const fn seq(&self) -> u32 {
        self.seq
    }

    /// The body: protobuf `DeviceRequest` bytes (untrusted until [`RequestFrame::verify`]).
    pub const fn body(&self) -> &'a [u8] {
        self.body
    }

    /// The request tag; the response tag covers it.
    pub const fn tag(&self) -> [u8; TAG_LEN] {
        self.tag
    }

    /// The whole frame, as received (e.g. to recognise a byte-identical retry).
    pub const fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Checks the tag against `key`, in constant time.
    ///
    /// # Errors
    /// [`FrameError::BadTag`] when the tag does not match.
    pub fn verify(&self, key: &DeviceKey) -> Result<(), FrameError> {
        request_mac(key, self.signed)
            .verify_truncated_left(&self.tag)
            .map_err(|_| FrameError::BadTag)
    }
}

/// Builds a tagged response frame answering the request whose tag is `request_tag`.
pub fn seal_response(
    key: &DeviceKey,
    request_tag: &[u8; TAG_LEN],
    seq: u32,
    server_time: u64,
    body: &[u8],
) -> Vec<u8> {
    let mut frame = Vec::with_capacity(MIN_FRAME_LEN + body.len());
    frame.push(FRAME_VERSION << 4);
    frame.extend_from_slice(&seq.to_be_bytes());
    frame.extend_from_slice(&server_time.to_be_bytes());
    frame.extend_from_slice(body);
    let tag = truncated(response_mac(key, request_tag, &frame));
    frame.extend_from_slice(&tag);
    frame
}

/// A verified response frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseFrame {
    /// The sequence number of the request this answers.
    pub seq: u32,
    /// The server's unix time when it answered: the machine's clock reference.
    pub server_time: u64,
    /// The body: protobuf `DeviceResponse` bytes.
    pub body: Vec<u8>,
}

/// Verifies (first) and parses the answer to the request whose tag is `request_tag`. The
/// caller should also check that [`ResponseFrame::seq`] is the seq it sent.
///
/// # Errors
/// [`FrameError::TooShort`], [`FrameError::TooLarge`], [`FrameError::BadTag`] (including an
/// answer to another request), [`FrameError::UnsupportedVersion`].
pub fn open_response(
    key: &DeviceKey,
    request_tag: &[u8; TAG_LEN],
    bytes: &[u8],
) -> Result<ResponseFrame, FrameError> {
    check_len(bytes.len())?;
    let (signed, tag) = split_tag(bytes)?;
    response_mac(key, request_tag, signed)
        .verify_truncated_left(&tag)
        .map_err(|_| FrameError::BadTag)?;
    let too_short = FrameError::TooShort { len: bytes.len() };
    let mut r = Reader::new(signed);
    let header = r.u8().ok_or(too_short)?;
    let seq = r.array::<4>().ok_or(too_short)?;
    let server_time = r.array::<8>().ok_or(too_short)?;
    if header != FRAME_VERSION << 4 {
        return Err(FrameError::UnsupportedVersion(header));
    }
    Ok(ResponseFrame {
        seq: u32::from_be_bytes(seq),
        server_time: u64::from_be_bytes(server_time),
        body: r.rest().to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> DeviceKey {
        DeviceKey::from_bytes([0x42; 32])
    }
    fn kv() -> KeyVersion {
        KeyVersion::new(3).unwrap()
    }
    fn dev() -> DeviceId {
        DeviceId::from_bytes([1, 2, 3, 4, 5, 6, 7, 8])
    }

    #[test]
    fn a_request_round_trips_and_verifies() {
        let f = seal_request(&key(), kv(), dev(), 41, b"hello");
        assert_eq!(f.len(), MIN_FRAME_LEN + 5);
        assert_eq!(f[0], 0x13);
        let r = RequestFrame::parse(&f).unwrap();
        assert_eq!(r.key_version(), kv());
        assert_eq!(r.device_id(), dev());
        assert_eq!(r.seq(), 41);
        assert_eq!(r.body(), b"hello");
        assert_eq!(r.as_bytes(), &f[..]);
        r.verify(&key()).unwrap();
    }

    #[test]
    fn a_response_round_trips_bound_to_its_request() {
        let req = seal_request(&key(), kv(), dev(), 41, b"");
        let tag = RequestFrame::parse(&req).unwrap().tag();
        let resp = seal_response(&key(), &tag, 41, 1_770_000_000, b"body");
        let opened = open_response(&key(), &tag, &resp).unwrap();
        assert_eq!(
            opened,
            ResponseFrame {
                seq: 41,
                server_time: 1_770_000_000,
                body: b"body".to_vec()
            }
        );
    }

    #[test]
    fn an_answer_to_another_request_is_refused() {
        let tag1 = RequestFrame::parse(&seal_request(&key(), kv(), dev(), 1, b""))
            .unwrap()
            .tag();
        let tag2 = RequestFrame::parse(&seal_request(&key(), kv(), dev(), 2, b""))
            .unwrap()
            .tag();
        let old = seal_response(&key(), &tag1, 1, 5, b"");
        assert_eq!(open_response(&key(), &tag2, &old), Err(FrameError::BadTag));
    }

    #[test]
    fn every_single_bit_flip_of_a_request_is_refused() {
        let f = seal_request(&key(), kv(), dev(), 7, b"\x0a\x00");
        for i in 0..f.len() * 8 {
            let mut b = f.clone();
            b[i / 8] ^= 1 << (i % 8);
            let outcome = RequestFrame::parse(&b).and_then(|r| r.verify(&key()));
            assert!(outcome.is_err(), "flip of bit {i} was accepted");
        }
    }

    #[test]
    fn every_single_bit_flip_of_a_response_is_refused() {
        let tag = [9u8; 16];
        let f = seal_response(&key(), &tag, 7, 99, b"\x10\x01");
        for i in 0..f.len() * 8 {
            let mut b = f.clone();
            b[i / 8] ^= 1 << (i % 8);
            assert!(
                open_response(&key(), &tag, &b).is_err(),
                "flip of bit {i} was accepted"
            );
        }
    }

    #[test]
    fn a_wrong_key_is_refused() {
        let f = seal_request(&key(), kv(), dev(), 7, b"x");
        let other = DeviceKey::from_bytes([0; 32]);
        assert_eq!(
            RequestFrame::parse(&f).unwrap().verify(&other),
            Err(FrameError::BadTag)
        );
        let resp = seal_response(&key(), &[0; 16], 7, 1, b"");
        assert_eq!(
            open_response(&other, &[0; 16], &resp),
            Err(FrameError::BadTag)
        );
    }

    #[test]
    fn sizes_and_versions_are_checked() {
        assert_eq!(
            RequestFrame::parse(&[0x10; 28]),
            Err(FrameError::TooShort { len: 28 })
        );
        assert_eq!(
            RequestFrame::parse(&[0x10; 1025]),
            Err(FrameError::TooLarge { len: 1025 })
        );
        assert!(RequestFrame::parse(&[0x10; 1024]).is_ok());
        assert!(RequestFrame::parse(&[0x10; 29]).is_ok());
        assert_eq!(
            RequestFrame::parse(&[0x20; 29]),
            Err(FrameError::UnsupportedVersion(0x20))
        );
        assert_eq!(
            open_response(&key(), &[0; 16], &[0; 28]),
            Err(FrameError::TooShort { len: 28 })
        );
        assert_eq!(
            open_response(&key(), &[0; 16], &[0; 1025]),
            Err(FrameError::TooLarge { len: 1025 })
        );
    }

    proptest! {
        #[test]
        fn parsing_random_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1100)) {
            if let Ok(r) = RequestFrame::parse(&bytes) {
                let _ = r.verify(&key());
            }
            let _ = open_response(&key(), &[0; 16], &bytes);
        }

        #[test]
        fn arbitrary_frames_round_trip(
            kv in 0u8..=15,
            id in any::<[u8; 8]>(),
            seq in any::<u32>(),
            time in any::<u64>(),
            key in any::<[u8; 32]>(),
            body in proptest::collection::vec(any::<u8>(), 0..=MAX_BODY_LEN),
        ) {
            let key = DeviceKey::from_bytes(key);
            let kv = KeyVersion::new(kv).unwrap();
            let f = seal_request(&key, kv, DeviceId::from_bytes(id), seq, &body);
            let r = RequestFrame::parse(&f).unwrap();
            prop_assert!(r.verify(&key).is_ok());
            prop_assert_eq!(r.key_version(), kv);
            prop_assert_eq!(r.device_id().to_bytes(), id);
            prop_assert_eq!(r.seq(), seq);
            prop_assert_eq!(r.body(), &body[..]);
            let resp = seal_response(&key, &r.tag(), seq, time, &body);
            let opened = open_response(&key, &r.tag(), &resp).unwrap();
            prop_assert_eq!(opened, ResponseFrame { seq, server_time: time, body });
        }
    }
}
