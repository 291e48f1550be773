//! The machine link's protobuf bodies (`DeviceRequest`, `DeviceResponse`, `DeviceFrame`) decoded
//! from arbitrary bytes: never panics; whatever decodes re-encodes and decodes to the same message.
#![no_main]

use blepay_proto::pb::v1::{DeviceFrame, DeviceRequest, DeviceResponse};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = DeviceRequest::decode(data) {
        assert_eq!(
            DeviceRequest::decode(m.encode_to_vec().as_slice()).ok(),
            Some(m)
        );
    }
    if let Ok(m) = DeviceResponse::decode(data) {
        assert_eq!(
            DeviceResponse::decode(m.encode_to_vec().as_slice()).ok(),
            Some(m)
        );
    }
    let _ = DeviceFrame::decode(data);
});
