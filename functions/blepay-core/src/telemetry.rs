//! What an idle machine tells the operator in its heartbeat (docs/protocol.md §3.6).

use alloc::string::String;
use alloc::vec::Vec;

/// The longest firmware version string kept (bytes); longer ones are refused by the decoder.
pub const MAX_FIRMWARE_VERSION_LEN: usize = 32;
/// The most fault codes one heartbeat carries.
pub const MAX_FAULT_CODES: usize = 8;
/// `AT+CSQ` `<rssi>` meaning "not known or not detectable".
pub const SIGNAL_UNKNOWN: u8 = 99;

/// A machine's latest telemetry, as its heartbeat carried it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Telemetry {
    /// Firmware version, at most [`MAX_FIRMWARE_VERSION_LEN`] bytes.
    pub firmware_version: String,
    /// Machine-specific fault codes; empty when healthy. At most [`MAX_FAULT_CODES`].
    pub fault_codes: Vec<u32>,
    /// `AT+CSQ` `<rssi>`: 0..=31 (−113 dBm + 2 dBm per step), or [`SIGNAL_UNKNOWN`].
    pub signal_quality: u8,
    /// Seconds since this boot.
    pub uptime_secs: u64,
    /// Boots since manufacture.
    pub boot_count: u32,
    /// Requests in the outbox waiting for delivery.
    pub outbox_depth: u32,
    /// Units dispensed since manufacture.
    pub lifetime_units: u64,
}

/// Why telemetry on the wire is not acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TelemetryError {
    #[error("firmware version longer than {MAX_FIRMWARE_VERSION_LEN} bytes")]
    FirmwareVersion,
    #[error("more than {MAX_FAULT_CODES} fault codes")]
    FaultCodes,
    #[error("signal quality must be 0..=31 or 99")]
    SignalQuality,
}

impl Telemetry {
    /// Check the limits above.
    ///
    /// # Errors
    /// The first limit broken.
    pub fn validate(&self) -> Result<(), TelemetryError> {
        if self.firmware_version.len() > MAX_FIRMWARE_VERSION_LEN {
            return Err(TelemetryError::FirmwareVersion);
        }
        if self.fault_codes.len() > MAX_FAULT_CODES {
            return Err(TelemetryError::FaultCodes);
        }
        if self.signal_quality > 31 && self.signal_quality != SIGNAL_UNKNOWN {
            return Err(TelemetryError::SignalQuality);
        }
        Ok(())
    }

    /// Signal strength in dBm for `AT+CSQ` 0..=31 (`None` when unknown): −113 + 2 × rssi.
    pub fn signal_dbm(&self) -> Option<i16> {
        (self.signal_quality <= 31).then(|| -113 + 2 * i16::from(self.signal_quality))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked() {
        let mut t = Telemetry {
            signal_quality: 20,
            ..Telemetry::default()
        };
        assert_eq!(t.validate(), Ok(()));
        assert_eq!(t.signal_dbm(), Some(-73));
        t.signal_quality = 32;
        assert_eq!(t.validate(), Err(TelemetryError::SignalQuality));
        t.signal_quality = SIGNAL_UNKNOWN;
        assert_eq!((t.validate(), t.signal_dbm()), (Ok(()), None));
        t.fault_codes = alloc::vec![1; 9];
        assert_eq!(t.validate(), Err(TelemetryError::FaultCodes));
        t.fault_codes.clear();
        t.firmware_version = "x".repeat(33);
        assert_eq!(t.validate(), Err(TelemetryError::FirmwareVersion));
    }
}
