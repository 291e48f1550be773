//! `RequestFrame::parse` (then `verify`) on arbitrary bytes: never panics; whatever parses keeps
//! its body inside the input.
#![no_main]

use blepay_proto::{DeviceKey, RequestFrame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = RequestFrame::parse(data) {
        assert!(frame.body().len() <= data.len());
        assert_eq!(frame.as_bytes(), data);
        let _ = frame.verify(&DeviceKey::from_bytes([7; 32]));
    }
});
