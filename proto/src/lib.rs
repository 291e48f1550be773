//! # blepay-proto — everything of blepay that crosses a wire
//!
//! The byte-exact specification is `docs/protocol.md`; its test vectors are checked by
//! `tests/protocol_vectors.rs`, so the document and this code cannot drift.
//!
//! ## Map
//! - [`pb`] — the protobuf v1 contract (`proto/blepay/v1/blepay.proto`, package `blepay.v1`):
//!   prost messages always; proto3 JSON serde impls with feature `json` (pbjson); tonic client
//!   and server stubs for `PhoneService`, `OpsService` and `DeviceService` with feature `grpc`.
//!   [`FILE_DESCRIPTOR_SET`] feeds gRPC server reflection.
//! - [`keys`] — the secret key types ([`MasterKey`], [`DeviceKey`]) and the device-key
//!   derivation [`derive_device_key`].
//! - [`advert`] — the 24-byte BLE advert ([`Advert`]): layout, tag, advertising data and the
//!   HCI command that sets it.
//! - [`frame`] — the authenticated machine↔server frames ([`seal_request`],
//!   [`RequestFrame`], [`seal_response`], [`open_response`]) that stay safe over plain HTTP.
//! - [`machine`] — what travels inside those frames, typed: [`machine::Request`] (poll, start,
//!   report) and [`machine::Answer`] (grants, session status, refusal with a
//!   [`machine::RefusalCode`]), encoded and decoded here for both the server and the machine.
//!
//! ## Invariants
//! - `no_std` + `alloc` with `--no-default-features`: the device firmware uses the very same
//!   codec. Nothing here depends on tokio, hyper or tonic unless feature `grpc` is on.
//! - No IO, no clock, no randomness: time, keys and sequence numbers are passed in.
//! - Every decoder is total: malformed bytes give an `Err`, never a panic.
//! - Tags are checked in constant time (`hmac::Mac::verify_truncated_left`).
//! - Secret keys never print: `Debug` shows `<redacted>`, there is no `Display`, and reading
//!   the bytes goes through the explicit `expose_*` methods. They are zeroized on drop.
#![cfg_attr(not(any(feature = "std", test)), no_std)]

extern crate alloc;

pub mod advert;
mod bytes;
pub mod frame;
pub mod keys;
pub mod machine;

pub use advert::{Advert, AdvertError, AdvertFlags, DEFAULT_COMPANY_ID};
pub use frame::{
    FrameError, RequestFrame, ResponseFrame, open_response, seal_request, seal_response,
};
pub use keys::{
    DeviceKey, KeyParseError, MasterKey, derive_device_key, unwrap_device_key, wrap_device_key,
};

/// Generated protobuf code for `proto/blepay/v1/blepay.proto`.
pub mod pb {
    /// Package `blepay.v1`.
    #[allow(
        clippy::all,
        clippy::pedantic,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        missing_docs,
        missing_debug_implementations,
        unreachable_pub
    )]
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/blepay.v1.rs"));
        #[cfg(feature = "json")]
        include!(concat!(env!("OUT_DIR"), "/blepay.v1.serde.rs"));
    }
}

/// The encoded `FileDescriptorSet` of the v1 protocol, for tonic-reflection (v1 and v1alpha).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/blepay_descriptor.bin"));
