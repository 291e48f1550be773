//! Flash-like, append-only record storage with CRCs: what the outbox persists into.
//!
//! A [`RecordLog`] stores opaque records. On the medium each one is framed as
//!
//! ```text
//! 0xB1 | len (u16, little-endian) | payload (len bytes) | CRC-32/ISO-HDLC (u32, little-endian)
//! ```
//!
//! with the CRC over the magic, the length and the payload. [`decode_log`] reads records up to the
//! first one that is incomplete or fails its CRC: a power loss can only tear the *last* append, so
//! that tail is cut off ([`RecordLog::recover`]) and later appends follow the last intact record.
//! Implementations: [`MemLog`] (here, `no_std`, for tests and RAM-backed targets) and
//! `FileLog` (with `std`, fsync after every append).

use alloc::vec::Vec;

use crc::{CRC_32_ISO_HDLC, Crc};

/// First byte of every framed record (not 0x00 or 0xFF, the erased states of flash).
pub const RECORD_MAGIC: u8 = 0xB1;
/// Framing bytes around a payload: magic, length, CRC.
pub const RECORD_OVERHEAD: usize = 1 + 2 + 4;
/// Largest payload a record may carry.
pub const MAX_RECORD_LEN: usize = 2048;

const CRC32: Crc<u32> = Crc::<u32>::new(&CRC_32_ISO_HDLC);

/// Append-only record storage.
///
/// An implementation over real flash appends records to a page and compacts into a second page
/// ([`RecordLog::replace`]); it must make [`RecordLog::append`] durable before returning, because
/// the caller sends a request only after its record is appended.
pub trait RecordLog {
    /// A storage failure.
    type Error: core::fmt::Debug;

    /// Append one record (at most [`MAX_RECORD_LEN`] bytes) durably.
    ///
    /// # Errors
    /// The medium failed or is full; the record must be treated as not written.
    fn append(&mut self, record: &[u8]) -> Result<(), Self::Error>;

    /// Every intact record, in order. A torn or corrupt tail is dropped and cut off, so that the
    /// next append follows the last intact record.
    ///
    /// # Errors
    /// The medium could not be read or truncated.
    fn recover(&mut self) -> Result<Vec<Vec<u8>>, Self::Error>;

    /// Replace the whole log with `records`, atomically: after a power loss either the old or the
    /// new log is found (compaction).
    ///
    /// # Errors
    /// The medium failed; the old log is still there.
    fn replace(&mut self, records: &[Vec<u8>]) -> Result<(), Self::Error>;

    /// Bytes the log occupies on the medium (to decide when to compact).
    fn used_bytes(&self) -> usize;
}

/// Why a record could not be framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// The payload is longer than [`MAX_RECORD_LEN`].
    #[error("record of {len} bytes is longer than {MAX_RECORD_LEN}")]
    TooLong {
        /// The payload length.
        len: usize,
    },
}

/// Frame `payload` for the medium (magic, length, payload, CRC).
///
/// # Errors
/// [`LogError::TooLong`].
pub fn encode_record(payload: &[u8]) -> Result<Vec<u8>, LogError> {
    let len = u16::try_from(payload.len())
        .ok()
        .filter(|&l| usize::from(l) <= MAX_RECORD_LEN)
        .ok_or(LogError::TooLong { len: payload.len() })?;
    let mut out = Vec::with_capacity(payload.len() + RECORD_OVERHEAD);
    out.push(RECORD_MAGIC);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(payload);
    let crc = CRC32.checksum(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// The intact records at the start of `bytes`, and how many bytes they take: decoding stops at the
/// first record that is incomplete, has a bad magic or length, or fails its CRC. Never panics.
pub fn decode_log(bytes: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut records = Vec::new();
    let mut at = 0usize;
    while let Some((payload, next)) = decode_one(bytes, at) {
        records.push(payload);
        at = next;
    }
    (records, at)
}

fn decode_one(bytes: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let head = bytes.get(at..at.checked_add(3)?)?;
    if head.first() != Some(&RECORD_MAGIC) {
        return None;
    }
    let len = usize::from(u16::from_le_bytes([*head.get(1)?, *head.get(2)?]));
    if len > MAX_RECORD_LEN {
        return None;
    }
    let body_end = at.checked_add(3)?.checked_add(len)?;
    let end = body_end.checked_add(4)?;
    let framed = bytes.get(at..body_end)?;
    let crc = bytes.get(body_end..end)?;
    let stored = u32::from_le_bytes([*crc.first()?, *crc.get(1)?, *crc.get(2)?, *crc.get(3)?]);
    if CRC32.checksum(framed) != stored {
        return None;
    }
    Some((bytes.get(at + 3..body_end)?, end))
}

/// A [`RecordLog`] in RAM, with the raw medium bytes exposed so tests can tear and corrupt them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemLog {
    bytes: Vec<u8>,
    capacity: Option<usize>,
}

/// The [`MemLog`] is full (only with [`MemLog::with_capacity_limit`]) or a record is too long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MemLogError {
    /// No room for the record.
    #[error("log full")]
    Full,
    /// The record could not be framed.
    #[error(transparent)]
    Record(#[from] LogError),
}

impl MemLog {
    /// An empty, unbounded log.
    pub const fn new() -> Self {
        Self {
            bytes: Vec::new(),
            capacity: None,
        }
    }

    /// An empty log that refuses appends beyond `capacity` bytes, like a flash page.
    pub const fn with_capacity_limit(capacity: usize) -> Self {
        Self {
            bytes: Vec::new(),
            capacity: Some(capacity),
        }
    }

    /// A log over existing medium bytes (e.g. a copy cut at some offset).
    pub const fn from_bytes(bytes: Vec<u8>) -> Self {
        Self {
            bytes,
            capacity: None,
        }
    }

    /// The raw medium bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The raw medium bytes, mutable (to simulate corruption).
    pub fn bytes_mut(&mut self) -> &mut Vec<u8> {
        &mut self.bytes
    }

    fn fits(&self, extra: usize) -> bool {
        self.capacity
            .is_none_or(|c| self.bytes.len().saturating_add(extra) <= c)
    }
}

impl RecordLog for MemLog {
    type Error = MemLogError;

    fn append(&mut self, record: &[u8]) -> Result<(), MemLogError> {
        let framed = encode_record(record)?;
        if !self.fits(framed.len()) {
            return Err(MemLogError::Full);
        }
        self.bytes.extend_from_slice(&framed);
        Ok(())
    }

    fn recover(&mut self) -> Result<Vec<Vec<u8>>, MemLogError> {
        let (records, valid) = decode_log(&self.bytes);
        let records = records.into_iter().map(<[u8]>::to_vec).collect();
        self.bytes.truncate(valid);
        Ok(records)
    }

    fn replace(&mut self, records: &[Vec<u8>]) -> Result<(), MemLogError> {
        let mut bytes = Vec::new();
        for r in records {
            bytes.extend_from_slice(&encode_record(r)?);
        }
        if self.capacity.is_some_and(|c| bytes.len() > c) {
            return Err(MemLogError::Full);
        }
        self.bytes = bytes;
        Ok(())
    }

    fn used_bytes(&self) -> usize {
        self.bytes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_torn_tail_is_cut_off() {
        let mut log = MemLog::new();
        log.append(b"one").unwrap();
        log.append(b"").unwrap();
        log.append(b"three").unwrap();
        let full = log.as_bytes().to_vec();
        assert_eq!(
            log.recover().unwrap(),
            [b"one".to_vec(), Vec::new(), b"three".to_vec()]
        );
        let mut torn = MemLog::from_bytes(full[..full.len() - 1].to_vec());
        assert_eq!(torn.recover().unwrap(), [b"one".to_vec(), Vec::new()]);
        assert_eq!(torn.used_bytes(), 3 + 2 * RECORD_OVERHEAD);
    }

    #[test]
    fn a_record_longer_than_the_limit_is_refused() {
        assert_eq!(
            encode_record(&[0; MAX_RECORD_LEN + 1]),
            Err(LogError::TooLong {
                len: MAX_RECORD_LEN + 1
            })
        );
        assert!(encode_record(&[0; MAX_RECORD_LEN]).is_ok());
    }
}
