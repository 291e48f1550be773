//! `Advert::parse` (and `verify` of whatever parses) on arbitrary bytes: never panics, and an
//! advert that parses re-encodes to the same bytes.
#![no_main]

use blepay_proto::{Advert, DeviceKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(advert) = Advert::parse(data) {
        assert_eq!(advert.encode().as_slice(), data);
        let _ = advert.verify(&DeviceKey::from_bytes([7; 32]));
    }
});
