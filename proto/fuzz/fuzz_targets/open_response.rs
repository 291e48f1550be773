//! `open_response` on arbitrary bytes (the first 16 are the request tag): never panics; and the
//! same bytes sealed as a body by `seal_response` open to exactly what was sealed, so the parser
//! behind the tag check is exercised too.
#![no_main]

use blepay_proto::{DeviceKey, open_response, seal_response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = DeviceKey::from_bytes([7; 32]);
    let Some((tag, rest)) = data.split_first_chunk::<16>() else {
        return;
    };
    let _ = open_response(&key, tag, rest);
    let sealed = seal_response(&key, tag, 42, 1_770_000_000, rest);
    if let Ok(frame) = open_response(&key, tag, &sealed) {
        assert_eq!((frame.seq, frame.server_time), (42, 1_770_000_000));
        assert_eq!(frame.body.as_slice(), rest);
    }
});
