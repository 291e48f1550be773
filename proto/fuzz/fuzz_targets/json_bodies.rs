//! The HTTP API's request bodies as `blepay-service`'s `Wire` extractor decodes them: proto3 JSON
//! (pbjson, `serde_json::from_slice`) and protobuf (`prost`), for every request message with a
//! body. Never panics; a JSON body that decodes re-encodes to JSON that decodes to the same message.
#![no_main]

use blepay_proto::pb::v1::{PayRequest, RegisterDeviceRequest, TopUpRequest, VerifyRequest};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn check<T>(data: &[u8])
where
    T: Message
        + Default
        + PartialEq
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned,
{
    if let Ok(m) = serde_json::from_slice::<T>(data) {
        let again = serde_json::to_vec(&m).expect("a decoded message encodes");
        assert_eq!(serde_json::from_slice::<T>(&again).ok(), Some(m));
    }
    let _ = T::decode(data);
}

fuzz_target!(|data: &[u8]| {
    check::<VerifyRequest>(data);
    check::<PayRequest>(data);
    check::<TopUpRequest>(data);
    check::<RegisterDeviceRequest>(data);
});
