//! The test vectors published in `docs/protocol.md` are recomputed here, so the document and
//! the code cannot drift. The vectors live in the fenced block tagged `vectors`, one
//! `name = value` per line (hex for byte strings, decimal for numbers).
// The helpers below are test code outside `#[test]` functions: failing loudly is their job.
#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)]

use std::collections::BTreeMap;

use blepay_core::{DeviceId, KeyEpoch, KeyVersion, Slot, UseCounter};
use blepay_proto::{
    Advert, AdvertFlags, DEFAULT_COMPANY_ID, MasterKey, RequestFrame, derive_device_key,
    open_response, seal_request, seal_response, unwrap_device_key, wrap_device_key,
};

fn published_vectors() -> BTreeMap<String, String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md");
    let doc = std::fs::read_to_string(path).expect("docs/protocol.md is readable");
    let block = doc
        .split("```vectors\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("docs/protocol.md has a ```vectors block");
    block
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').expect("a `name = value` line");
            (k.trim().to_owned(), v.trim().replace(' ', ""))
        })
        .collect()
}

struct Vectors(BTreeMap<String, String>);

impl Vectors {
    fn get(&self, name: &str) -> &str {
        self.0
            .get(name)
            .unwrap_or_else(|| panic!("docs/protocol.md vectors lack `{name}`"))
    }
    fn bytes(&self, name: &str) -> Vec<u8> {
        hex::decode(self.get(name)).unwrap_or_else(|e| panic!("`{name}` is not hex: {e}"))
    }
    fn num<T: std::str::FromStr>(&self, name: &str) -> T {
        self.get(name)
            .parse()
            .unwrap_or_else(|_| panic!("`{name}` is not a number"))
    }
}

#[test]
fn the_published_vectors_match_the_code() {
    let v = Vectors(published_vectors());

    let master = MasterKey::from_bytes(v.bytes("master_key").try_into().unwrap());
    let key_version = KeyVersion::new(v.num("key_version")).unwrap();
    let device = DeviceId::from_bytes(v.bytes("device_id").try_into().unwrap());
    let device_key = derive_device_key(&master, key_version, device, KeyEpoch::FIRST);
    assert_eq!(device_key.expose_hex(), v.get("device_key"), "device_key");

    let advert = Advert::sign(
        &device_key,
        key_version,
        device,
        Slot::new(v.num("slot")),
        UseCounter::new(v.num("use_counter")),
        AdvertFlags::from_bits(v.num("flags")).unwrap(),
    );
    assert_eq!(hex::encode(advert.encode()), v.get("payload"), "payload");
    assert_eq!(
        hex::encode(advert.advertising_data(DEFAULT_COMPANY_ID)),
        v.get("advertising_data"),
        "advertising_data"
    );
    assert_eq!(
        hex::encode(advert.hci_le_set_advertising_data(DEFAULT_COMPANY_ID)),
        v.get("hci_le_set_advertising_data"),
        "hci_le_set_advertising_data"
    );
    let parsed = Advert::parse(&v.bytes("payload")).unwrap();
    parsed.verify(&device_key).unwrap();
    assert_eq!(parsed, advert);

    let request = seal_request(
        &device_key,
        key_version,
        device,
        v.num("request_seq"),
        &v.bytes("request_body"),
    );
    assert_eq!(
        hex::encode(&request),
        v.get("request_frame"),
        "request_frame"
    );
    let parsed = RequestFrame::parse(&request).unwrap();
    parsed.verify(&device_key).unwrap();
    assert_eq!(
        hex::encode(parsed.tag()),
        v.get("request_tag"),
        "request_tag"
    );

    let response = seal_response(
        &device_key,
        &parsed.tag(),
        v.num("response_seq"),
        v.num("server_time"),
        &v.bytes("response_body"),
    );
    assert_eq!(
        hex::encode(&response),
        v.get("response_frame"),
        "response_frame"
    );
    let opened = open_response(&device_key, &parsed.tag(), &response).unwrap();
    assert_eq!(opened.body, v.bytes("response_body"));
}

#[test]
fn the_published_bodies_are_the_documented_messages() {
    use blepay_proto::pb::v1::{DeviceRequest, DeviceResponse, SessionStatus, device_request};
    use prost::Message as _;

    let v = Vectors(published_vectors());
    let request = DeviceRequest::decode(v.bytes("request_body").as_slice()).unwrap();
    let Some(device_request::Kind::Start(start)) = request.kind else {
        panic!("request_body is a Start");
    };
    assert_eq!(start.session_id, (0u8..16).collect::<Vec<_>>());
    let response = DeviceResponse::decode(v.bytes("response_body").as_slice()).unwrap();
    assert_eq!(response.status(), SessionStatus::Active);
}

/// The press/heartbeat exchange vectors (§4.1): a press with seq 2 answered with the started
/// session's terms, a heartbeat with seq 3 answered with an empty body, and the same advert with
/// the link-down flag. Every mismatch is listed with the value the code computes.
#[test]
fn the_press_and_heartbeat_vectors_match_the_code() {
    use blepay_core::{Amount, SessionId, Telemetry};
    use blepay_proto::machine::{Answer, Grant, Request};

    let v = Vectors(published_vectors());
    let master = MasterKey::from_bytes(v.bytes("master_key").try_into().unwrap());
    let key_version = KeyVersion::new(v.num("key_version")).unwrap();
    let device = DeviceId::from_bytes(v.bytes("device_id").try_into().unwrap());
    let key = derive_device_key(&master, key_version, device, KeyEpoch::FIRST);
    let mut wrong = Vec::new();
    let mut check = |name: &str, actual: &[u8]| {
        if v.0.get(name).map(String::as_str) != Some(hex::encode(actual).as_str()) {
            wrong.push(format!("{name} = {}", hex::encode(actual)));
        }
    };

    let press = Request::Press.encode();
    check("press_body", &press);
    let press_frame = seal_request(&key, key_version, device, v.num("press_seq"), &press);
    check("press_frame", &press_frame);
    let press_tag = RequestFrame::parse(&press_frame).unwrap().tag();
    check("press_tag", &press_tag);
    let started = Answer::Started(Ok(Grant {
        session: SessionId::from_bytes((0u8..16).collect::<Vec<_>>().try_into().unwrap()),
        hold: Amount::positive(v.num("started_hold")).unwrap(),
        price_per_unit: Amount::positive(v.num("started_price_per_unit")).unwrap(),
        expires_at: v.num("started_report_deadline"),
        use_counter: UseCounter::new(v.num("use_counter")),
    }))
    .encode();
    check("started_body", &started);
    let started_frame = seal_response(
        &key,
        &press_tag,
        v.num("press_seq"),
        v.num("started_server_time"),
        &started,
    );
    check("started_frame", &started_frame);

    let heartbeat = Request::Heartbeat(Telemetry {
        firmware_version: v.get("heartbeat_firmware_version").to_owned(),
        fault_codes: Vec::new(),
        signal_quality: v.num("heartbeat_signal_quality"),
        uptime_secs: v.num("heartbeat_uptime_secs"),
        boot_count: v.num("heartbeat_boot_count"),
        outbox_depth: 0,
        lifetime_units: v.num("heartbeat_lifetime_units"),
    })
    .encode();
    check("heartbeat_body", &heartbeat);
    let heartbeat_frame = seal_request(
        &key,
        key_version,
        device,
        v.num("heartbeat_seq"),
        &heartbeat,
    );
    check("heartbeat_frame", &heartbeat_frame);
    let heartbeat_tag = RequestFrame::parse(&heartbeat_frame).unwrap().tag();
    let ack = Answer::Ack.encode();
    check(
        "ack_frame",
        &seal_response(
            &key,
            &heartbeat_tag,
            v.num("heartbeat_seq"),
            v.num("ack_server_time"),
            &ack,
        ),
    );

    let link_down = Advert::sign(
        &key,
        key_version,
        device,
        Slot::new(v.num("slot")),
        UseCounter::new(v.num("use_counter")),
        AdvertFlags::from_bits(v.num("link_down_flags")).unwrap(),
    );
    check("link_down_payload", &link_down.encode());
    assert!(
        Advert::parse(&link_down.encode())
            .unwrap()
            .flags
            .contains(AdvertFlags::LINK_DOWN)
    );
    assert!(
        wrong.is_empty(),
        "docs/protocol.md vectors differ:\n{}",
        wrong.join("\n")
    );
}

/// §4.2: the key of epoch 1, its wrap under the epoch-0 key, the heartbeat ack carrying it, and
/// the next heartbeat sealed under the new key (then an advert under it).
#[test]
fn the_key_rotation_vectors_match_the_code() {
    use blepay_proto::machine::{Answer, KeyUpdate};

    let v = Vectors(published_vectors());
    let master = MasterKey::from_bytes(v.bytes("master_key").try_into().unwrap());
    let key_version = KeyVersion::new(v.num("key_version")).unwrap();
    let device = DeviceId::from_bytes(v.bytes("device_id").try_into().unwrap());
    let epoch = KeyEpoch::new(v.num("rotated_epoch"));
    let current = derive_device_key(&master, key_version, device, KeyEpoch::FIRST);
    let next = derive_device_key(&master, key_version, device, epoch);
    let mut wrong = Vec::new();
    let mut check = |name: &str, actual: &[u8]| {
        if v.0.get(name).map(String::as_str) != Some(hex::encode(actual).as_str()) {
            wrong.push(format!("{name} = {}", hex::encode(actual)));
        }
    };
    check("rotated_device_key", next.expose_bytes());
    let wrapped = wrap_device_key(&current, device, epoch, &next);
    check("wrapped_key", &wrapped);
    assert_eq!(
        unwrap_device_key(&current, device, epoch, &wrapped).expose_bytes(),
        next.expose_bytes()
    );
    let update = KeyUpdate { epoch, wrapped };
    let body = Answer::Ack.encode_with(Some(&update));
    check("key_update_ack_body", &body);
    let heartbeat_frame = v.bytes("heartbeat_frame");
    let heartbeat_tag = RequestFrame::parse(&heartbeat_frame).unwrap().tag();
    let ack = seal_response(
        &current,
        &heartbeat_tag,
        v.num("heartbeat_seq"),
        v.num("ack_server_time"),
        &body,
    );
    check("key_update_ack_frame", &ack);
    let opened = open_response(&current, &heartbeat_tag, &ack).unwrap();
    assert_eq!(KeyUpdate::from_body(&opened.body), Some(Ok(update)));
    let after = seal_request(
        &next,
        key_version,
        device,
        v.num("rotated_heartbeat_seq"),
        &v.bytes("heartbeat_body"),
    );
    check("rotated_heartbeat_frame", &after);
    let advert = Advert::sign(
        &next,
        key_version,
        device,
        Slot::new(v.num("slot")),
        UseCounter::new(v.num("use_counter")),
        AdvertFlags::from_bits(v.num("flags")).unwrap(),
    );
    check("rotated_payload", &advert.encode());
    assert!(
        wrong.is_empty(),
        "docs/protocol.md vectors differ:\n{}",
        wrong.join("\n")
    );
}
