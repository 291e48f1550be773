//! # blepay-device-client — the machine side
//!
//! Everything a machine's firmware needs to take part in blepay, as sans-IO building blocks: the
//! caller owns the radio, the modem, the meter, the valve and the flash; this crate owns the bytes
//! and the decisions. It is `#![no_std]` + `alloc` unless feature `std`, and uses the very same
//! protocol code as the server (`blepay-proto`). It must not depend on tokio, hyper, tonic or any
//! server crate.
//!
//! Crate map:
//! - [`Identity`] (here) — device id + key: signs adverts, seals requests, opens answers; and the
//!   body builders [`poll`], [`start`], [`report`].
//! - [`engine`] — the session engine: grants, start button, meter ticks, end of dispensing →
//!   requests to send and actions (open/close the valve); one session and one request in flight
//!   at a time.
//! - [`outbox`] — the persisted queue of starts and reports (appended before sending, dropped when
//!   answered) and the sequence-number high-water mark; [`journal`] — its record format and
//!   replay.
//! - [`log`] — [`log::RecordLog`], append-only records with CRC-32, and [`log::MemLog`];
//!   `file_log::FileLog` with `std`.
//! - [`clock`] — server time from the authenticated answers; [`advertiser`] — the 31-byte
//!   advertising data and the HCI command, per 30 s slot.
//! - [`transport`] — the blocking [`transport::Transport`] trait (one HTTP POST); [`driver`] — the
//!   loop gluing the engine to a transport.
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
#[cfg(feature = "std")]
pub mod http;
pub mod journal;
pub mod log;
pub mod outbox;
pub mod transport;

use alloc::vec::Vec;

use blepay_core::{DeviceId, KeyVersion, SessionId, Slot, Units, UseCounter};
use blepay_proto::pb::v1 as pb;
use blepay_proto::{Advert, AdvertFlags, DeviceKey, FrameError, open_response, seal_request};
use prost::Message;

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
    pub tag: [u8; 16],
    pub frame: Vec<u8>,
}

/// An authenticated answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The server's unix time: the machine's clock reference.
    pub server_time: u64,
    pub response: pb::DeviceResponse,
}

impl Answer {
    /// The server's refusal code, if it refused.
    pub fn error_code(&self) -> Option<&str> {
        (!self.response.error_code.is_empty()).then_some(self.response.error_code.as_str())
    }
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

    /// Seal a request body as request number `seq`.
    pub fn request(&self, seq: u32, body: &pb::DeviceRequest) -> Pending {
        let frame = seal_request(
            &self.key,
            self.key_version,
            self.device_id,
            seq,
            &body.encode_to_vec(),
        );
        let mut tag = [0u8; 16];
        if let Some(t) = frame.get(frame.len().saturating_sub(16)..) {
            tag.copy_from_slice(t);
        }
        Pending { seq, tag, frame }
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
        let response =
            pb::DeviceResponse::decode(r.body.as_slice()).map_err(|_| LinkError::Body)?;
        Ok(Answer {
            server_time: r.server_time,
            response,
        })
    }
}

/// A poll request body.
pub fn poll() -> pb::DeviceRequest {
    pb::DeviceRequest {
        kind: Some(pb::device_request::Kind::Poll(pb::Poll {})),
    }
}

/// A start request body.
pub fn start(session: SessionId) -> pb::DeviceRequest {
    pb::DeviceRequest {
        kind: Some(pb::device_request::Kind::Start(pb::Start {
            session_id: session.to_bytes().to_vec(),
        })),
    }
}

/// A report request body: `units` dispensed so far; `last` ends the session.
pub fn report(session: SessionId, units: Units, last: bool) -> pb::DeviceRequest {
    pb::DeviceRequest {
        kind: Some(pb::device_request::Kind::Report(pb::Report {
            session_id: session.to_bytes().to_vec(),
            units: units.get(),
            r#final: last,
        })),
    }
}
