//! `cargo bench -p blepay-proto --bench advert`: what the protocol's crypto costs.
//!
//! - `advert/parse+verify`: [`Advert::parse`] of the 24-byte payload and [`Advert::verify`] with a
//!   known [`DeviceKey`] (the key derivation is benchmarked on its own, `advert/derive_device_key`).
//! - `advert/raw_hmac_sha256_16B`: a bare HMAC-SHA256 of the same 16 signed bytes with the same
//!   key — the floor any tagged advert must pay. **The figure is the ratio** of the two medians,
//!   printed at the end (`parse+verify / raw HMAC`).
//! - `frame/*`: sealing and opening the machine frames (a poll request, a report request, a poll
//!   answer carrying one grant).
//!
//! Benchmarks measure; they never assert timings.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::hint::black_box;
use std::path::{Path, PathBuf};

use blepay_core::{DeviceId, KeyVersion, Slot, UseCounter};
use blepay_proto::pb::v1 as pb;
use blepay_proto::{
    Advert, AdvertFlags, DeviceKey, MasterKey, RequestFrame, derive_device_key, open_response,
    seal_request, seal_response,
};
use criterion::{Criterion, criterion_group};
use hmac::{Hmac, Mac};
use prost::Message;
use sha2::Sha256;

fn key_bytes() -> [u8; 32] {
    let mut b = [0u8; 32];
    for (i, x) in (0u8..).zip(b.iter_mut()) {
        *x = i.wrapping_mul(7).wrapping_add(3);
    }
    b
}

fn device() -> DeviceId {
    DeviceId::from_bytes([1, 2, 3, 4, 5, 6, 7, 8])
}

fn kv() -> KeyVersion {
    KeyVersion::new(0).unwrap()
}

fn advert_benches(c: &mut Criterion) {
    let key = DeviceKey::from_bytes(key_bytes());
    let payload = Advert::sign(
        &key,
        kv(),
        device(),
        Slot::new(59_000_000),
        UseCounter::new(7),
        AdvertFlags::NONE,
    )
    .encode();
    let mut g = c.benchmark_group("advert");
    g.bench_function("parse+verify", |b| {
        b.iter(|| {
            let a = Advert::parse(black_box(&payload)).unwrap();
            a.verify(black_box(&key)).unwrap();
        });
    });
    let raw_key = key_bytes();
    g.bench_function("raw_hmac_sha256_16B", |b| {
        b.iter(|| {
            let mut mac = Hmac::<Sha256>::new_from_slice(black_box(&raw_key)).unwrap();
            mac.update(black_box(&payload[..16]));
            black_box(mac.finalize().into_bytes());
        });
    });
    let master = MasterKey::from_bytes(key_bytes());
    g.bench_function("derive_device_key", |b| {
        b.iter(|| {
            derive_device_key(
                black_box(&master),
                kv(),
                black_box(device()),
                blepay_core::KeyEpoch::FIRST,
            )
        });
    });
    g.finish();
}

fn frame_benches(c: &mut Criterion) {
    let key = DeviceKey::from_bytes(key_bytes());
    // Bodies as the device client and the server encode them.
    let session_id = vec![0xab; 16];
    let poll_body = pb::DeviceRequest {
        kind: Some(pb::device_request::Kind::Poll(pb::Poll {})),
    }
    .encode_to_vec();
    let report_body = pb::DeviceRequest {
        kind: Some(pb::device_request::Kind::Report(pb::Report {
            session_id: session_id.clone(),
            units: 3,
            r#final: true,
        })),
    }
    .encode_to_vec();
    let grant_body = pb::DeviceResponse {
        grants: vec![pb::Grant {
            session_id,
            hold_amount: 250,
            price_per_unit: 25,
            expires_at: 1_770_000_120,
            use_counter: 7,
        }],
        ..Default::default()
    }
    .encode_to_vec();

    let mut g = c.benchmark_group("frame");
    g.bench_function("seal_request/poll", |b| {
        b.iter(|| seal_request(&key, kv(), device(), black_box(41), black_box(&poll_body)));
    });
    let report = seal_request(&key, kv(), device(), 42, &report_body);
    g.bench_function("parse+verify_request/report", |b| {
        b.iter(|| {
            let f = RequestFrame::parse(black_box(&report)).unwrap();
            f.verify(&key).unwrap();
        });
    });
    let tag = RequestFrame::parse(&report).unwrap().tag();
    g.bench_function("seal_response/grant", |b| {
        b.iter(|| {
            seal_response(
                &key,
                black_box(&tag),
                42,
                1_770_000_000,
                black_box(&grant_body),
            )
        });
    });
    let answer = seal_response(&key, &tag, 42, 1_770_000_000, &grant_body);
    g.bench_function("open_response/grant", |b| {
        b.iter(|| open_response(&key, black_box(&tag), black_box(&answer)).unwrap());
    });
    g.finish();
}

criterion_group!(benches, advert_benches, frame_benches);

/// Where criterion keeps its results: `CRITERION_HOME`, else `$CARGO_TARGET_DIR/criterion`, else
/// the `criterion` folder of the target dir this bench was built in (criterion's own default).
fn criterion_home() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        return Path::new(&target).join("criterion");
    }
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map_or_else(|| PathBuf::from("target"), Path::to_path_buf)
        .join("criterion")
}

/// The median point estimate (ns) of one benchmark from its latest run, if there is one.
fn median_ns(home: &Path, group: &str, bench: &str) -> Option<f64> {
    let path = home.join(group).join(bench).join("new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["median"]["point_estimate"].as_f64()
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // Only after a real measurement run (`cargo bench`), not in `cargo test`'s quick pass.
    if std::env::args().any(|a| a == "--bench") {
        let home = criterion_home();
        match (
            median_ns(&home, "advert", "parse+verify"),
            median_ns(&home, "advert", "raw_hmac_sha256_16B"),
        ) {
            (Some(verify), Some(raw)) => println!(
                "\nadvert parse+verify {verify:.1} ns / raw HMAC-SHA256 of 16 bytes {raw:.1} ns = ratio {:.2}",
                verify / raw
            ),
            _ => println!(
                "\n(no advert medians under {} to compute the ratio from)",
                home.display()
            ),
        }
    }
}
