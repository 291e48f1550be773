//! What to load into the BLE controller: the 31-byte advertising data and the HCI command that
//! sets it, rebuilt when the slot, the use counter or the flags change.
//!
//! The bytes come from `blepay_proto::Advert` — the very code the server verifies with.

use blepay_core::{Slot, UseCounter};
use blepay_proto::{Advert, AdvertFlags};

use crate::Identity;

/// One advert, ready for the radio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdvertData {
    /// The parsed advert (slot, use counter, flags, tag).
    pub advert: Advert,
    /// The 24-byte payload the phone forwards to the server.
    pub payload: [u8; Advert::LEN],
    /// Legacy advertising data: Flags AD + Manufacturer Specific Data (docs/protocol.md §2.1).
    pub advertising_data: [u8; Advert::ADVERTISING_DATA_LEN],
    /// H4 HCI LE Set Advertising Data command carrying `advertising_data`.
    pub hci_command: [u8; Advert::HCI_COMMAND_LEN],
}

impl AdvertData {
    /// The advert of `identity` at server time `server_now`.
    pub fn build(
        identity: &Identity,
        company_id: u16,
        server_now: u64,
        use_counter: UseCounter,
        flags: AdvertFlags,
    ) -> Self {
        let advert = identity.advert(server_now, use_counter, flags);
        Self {
            advert,
            payload: advert.encode(),
            advertising_data: advert.advertising_data(company_id),
            hci_command: advert.hci_le_set_advertising_data(company_id),
        }
    }
}

/// Remembers what the radio broadcasts, to reload it only when it changes (every 30 s slot, after
/// a session, when a flag flips).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertiser {
    company_id: u16,
    loaded: Option<(Slot, UseCounter, AdvertFlags)>,
}

impl Advertiser {
    /// An advertiser for the given Bluetooth company identifier (`blepay_proto::DEFAULT_COMPANY_ID`
    /// unless the deployment says otherwise).
    pub const fn new(company_id: u16) -> Self {
        Self {
            company_id,
            loaded: None,
        }
    }

    /// The company identifier in the manufacturer data.
    pub const fn company_id(&self) -> u16 {
        self.company_id
    }

    /// The advert to broadcast now, whether or not it changed.
    pub fn current(
        &self,
        identity: &Identity,
        server_now: u64,
        use_counter: UseCounter,
        flags: AdvertFlags,
    ) -> AdvertData {
        AdvertData::build(identity, self.company_id, server_now, use_counter, flags)
    }

    /// `Some(new advert)` when the slot, use counter or flags differ from what was last returned
    /// (load it into the controller), `None` when the radio already has the right one.
    pub fn update(
        &mut self,
        identity: &Identity,
        server_now: u64,
        use_counter: UseCounter,
        flags: AdvertFlags,
    ) -> Option<AdvertData> {
        let key = (Slot::at(server_now), use_counter, flags);
        if self.loaded == Some(key) {
            return None;
        }
        self.loaded = Some(key);
        Some(self.current(identity, server_now, use_counter, flags))
    }

    /// Forget what was loaded (e.g. after the BLE controller was reset): the next
    /// [`Advertiser::update`] returns the advert again.
    pub fn invalidate(&mut self) {
        self.loaded = None;
    }
}
