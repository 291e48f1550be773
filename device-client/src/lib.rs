//! # blepay-device-client — the machine side
//!
//! Everything a machine's firmware needs to take part in blepay, as sans-IO building blocks: the
//! caller owns the radio, the modem, the meter, the valve and the flash; this crate owns the bytes
//! and the decisions. It is `#![no_std]` + `alloc` unless feature `std`, and uses the very same
//! protocol code as the server (`blepay-proto`). It must not depend on tokio, hyper, tonic or any
//! server crate.
//!
//! Crate map:
//! - [`Identity`] (here) — device id + key: signs adverts, seals [`Request`]s, opens answers into
//!   typed [`Answer`]s (the codec is `blepay_proto::machine`, the one the server uses); and the
//!   request builders [`press`], [`heartbeat`], [`report`] (and the legacy [`poll`], [`start`]).
//! - [`grant`] — [`grant::Grant`], the terms of a session started on this machine, and its cap.
//! - [`engine`] — the session engine: start button, meter ticks, end of dispensing, heartbeat
//!   timer → requests to send and actions (open/close the valve); one session and one request in
//!   flight at a time; nothing sent while idle but a rare heartbeat.
//! - [`outbox`] — the persisted queue of presses and reports (appended before sending, dropped
//!   when answered), the sequence-number high-water mark and the telemetry counters; [`journal`]
//!   — its record format and replay.
//! - [`log`] — [`log::RecordLog`], append-only records with CRC-32, and [`log::MemLog`];
//!   `file_log::FileLog` with `std`.
//! - [`clock`] — server time from the authenticated answers; [`advertiser`] — the 31-byte
//!   advertising data and the HCI command, per 30 s slot.
//! - [`transport`] — the blocking [`transport::Transport`] trait (one HTTP POST, and the link's
//!   status); [`driver`] — the loop gluing the engine to a transport; [`at`] — the SIM800
//!   transport; `sim800_sim` (feature `sim800-sim`) — a SIM800 simulator for tests and benches.
//!
//! Rules the caller must keep (docs/protocol.md) are kept by the [`engine::Engine`]:
//! - the next sequence number is persisted *before* a request is sent, so it never goes back
//!   after a power loss;
//! - request N+1 is sent only after request N was answered (N is retried with the *same bytes*);
//! - the clock comes from [`Answer::server_time`].
#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

pub mod advertiser;
pub mod at;
pub mod clock;
pub mod driver;
pub mod engine;
#[cfg(feature = "std")]
pub mod file_log;
pub mod grant;
#[cfg(feature = "std")]
pub mod http;
pub mod journal;
pub mod log;
pub mod outbox;
#[cfg(feature = "sim800-sim")]
pub mod sim800_sim;
pub mod transport;

use alloc::vec::Vec;

use blepay_core::{DeviceId, KeyVersion, SessionId, Slot, Units, UseCounter};
pub use blepay_proto::machine::{self, Refusal, RefusalCode, Request, Status};
use blepay_proto::{Advert, AdvertFlags, DeviceKey, FrameError, open_response, seal_request};

/// Who the machine is: its id, key version and provisioned device key.
#[derive(Debug, Clone)]
pub struct Identity {
    pub device_id: DeviceId,
    pub key_version: KeyVersion,
    pub key: DeviceKey,
}

/// Why an answer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("answer frame: {0}")]
    Frame(#[from] FrameError),
    #[error("answer is for sequence number {got}, expected {expected}")]
    WrongSeq { expected: u32, got: u32 },
    #[error("answer body does not decode")]
    Body,
}

/// A sealed request, kept until its answer arrives (retries send `frame` unchanged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub seq: u32,
    /// What it asks (how its answer is read).
    pub kind: machine::RequestKind,
    pub tag: [u8; 16],
    pub frame: Vec<u8>,
}

/// An authenticated answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The server's unix time: the machine's clock reference.
    pub server_time: u64,
    /// What the server answered.
    pub body: machine::Answer,
    /// A rotated key the answer carries (docs/protocol.md §1.1), wrapped under the key that
    /// opened it; an unusable one is left out.
    pub key_update: Option<machine::KeyUpdate>,
}

impl Answer {
    /// The server's refusal, if it refused.
    pub const fn refusal(&self) -> Option<&Refusal> {
        self.body.refusal()
    }

    /// The refusal's code, if the server refused.
    pub fn refusal_code(&self) -> Option<RefusalCode> {
        self.refusal().map(|r| r.code)
    }
}

/// The last 16 bytes of a sealed request frame: its tag, which the answer is bound to.
pub(crate) fn tag_of(frame: &[u8]) -> [u8; 16] {
    let mut tag = [0u8; 16];
    if let Some(t) = frame.get(frame.len().saturating_sub(16)..) {
        if t.len() == 16 {
            tag.copy_from_slice(t);
        }
    }
    tag
}

impl Identity {
    /// The advert to broadcast at `unix_time` (already corrected by the server clock).
    pub fn advert(&self, unix_time: u64, use_counter: UseCounter, flags: AdvertFlags) -> Advert {
        Advert::sign(
            &self.key,
            self.key_version,
            self.device_id,
            Slot::at(unix_time),
            use_counter,
            flags,
        )
    }

    /// Seal `request` as request number `seq`.
    pub fn request(&self, seq: u32, request: &Request) -> Pending {
        let frame = seal_request(
            &self.key,
            self.key_version,
            self.device_id,
            seq,
            &request.encode(),
        );
        Pending {
            seq,
            kind: request.kind(),
            tag: tag_of(&frame),
            frame,
        }
    }

    /// Verify and decode the answer to `pending`.
    ///
    /// # Errors
    /// A forged, corrupted or mismatched answer.
    pub fn open(&self, pending: &Pending, bytes: &[u8]) -> Result<Answer, LinkError> {
        let r = open_response(&self.key, &pending.tag, bytes)?;
        if r.seq != pending.seq {
            return Err(LinkError::WrongSeq {
                expected: pending.seq,
                got: r.seq,
            });
        }
        let body = machine::Answer::decode(pending.kind, &r.body).map_err(|_| LinkError::Body)?;
        Ok(Answer {
            server_time: r.server_time,
            body,
            key_update: machine::KeyUpdate::from_body(&r.body).and_then(Result::ok),
        })
    }

    /// This identity with the key a key update carries, unwrapped with this identity's key
    /// (which must be the key that opened the answer carrying it).
    #[must_use]
    pub fn rekeyed(&self, update: &machine::KeyUpdate) -> Self {
        Self {
            device_id: self.device_id,
            key_version: self.key_version,
            key: blepay_proto::unwrap_device_key(
                &self.key,
                self.device_id,
                update.epoch,
                &update.wrapped,
            ),
        }
    }
}

/// A press request: the start button was pressed.
pub const fn press() -> Request {
    Request::Press
}

/// A heartbeat request carrying `telemetry`.
pub const fn heartbeat(telemetry: blepay_core::Telemetry) -> Request {
    Request::Heartbeat(telemetry)
}

/// Legacy: a poll request (the firmware no longer polls).
pub const fn poll() -> Request {
    Request::Poll
}

/// Legacy: a start request for a session learnt by polling.
pub const fn start(session: SessionId) -> Request {
    Request::Start { session }
}

/// A report request: `units` dispensed so far; `last` ends the session.
pub const fn report(session: SessionId, units: Units, last: bool) -> Request {
    Request::Report {
        session,
        units,
        last,
    }
}
