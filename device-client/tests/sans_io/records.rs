//! The record decoders never panic, and what is encoded decodes back.

use blepay_core::{Amount, SessionId, Units, UseCounter};
use blepay_device_client::engine::Grant;
use blepay_device_client::journal::{Entry, Op, OpenSession, Record};
use blepay_device_client::log::{MemLog, RecordLog, decode_log, encode_record};
use proptest::prelude::*;

fn grant() -> impl Strategy<Value = Grant> {
    (
        any::<[u8; 16]>(),
        1..1_000_000i64,
        1..1000i64,
        any::<u64>(),
        any::<u16>(),
    )
        .prop_map(|(s, hold, price, exp, uc)| Grant {
            session: SessionId::from_bytes(s),
            hold: Amount::positive(hold).unwrap(),
            price_per_unit: Amount::positive(price).unwrap(),
            expires_at: exp,
            use_counter: UseCounter::new(uc),
        })
}

fn record() -> impl Strategy<Value = Record> {
    prop_oneof![
        (any::<u32>(), any::<u16>(), any::<i64>(), any::<bool>()).prop_map(|(h, u, o, s)| {
            Record::State {
                seq_high_water: h,
                use_counter: UseCounter::new(u),
                clock_offset: o,
                clock_synced: s,
            }
        }),
        (
            any::<u32>(),
            grant(),
            proptest::collection::vec(any::<u8>(), 0..200)
        )
            .prop_map(|(seq, grant, frame)| Record::Enqueue(Entry {
                seq,
                op: Op::Start { grant },
                frame
            })),
        (
            any::<u32>(),
            any::<[u8; 16]>(),
            any::<u64>(),
            any::<bool>(),
            any::<u16>(),
            proptest::collection::vec(any::<u8>(), 0..200)
        )
            .prop_map(|(seq, s, units, last, uc, frame)| Record::Enqueue(Entry {
                seq,
                op: Op::Report {
                    session: SessionId::from_bytes(s),
                    units: Units::new(units),
                    last,
                    use_counter: UseCounter::new(uc)
                },
                frame
            })),
        (any::<u32>(), any::<bool>()).prop_map(|(seq, refused)| Record::Ack { seq, refused }),
        (grant(), any::<bool>(), any::<u64>()).prop_map(|(grant, started, u)| Record::Session(
            OpenSession {
                grant,
                started,
                units: Units::new(u)
            }
        )),
        (any::<u32>(), proptest::collection::vec(any::<u8>(), 0..200)).prop_map(|(seq, frame)| {
            Record::Enqueue(Entry {
                seq,
                op: Op::Press,
                frame,
            })
        }),
        (any::<u32>(), grant()).prop_map(|(seq, grant)| Record::Started { seq, grant }),
        (
            any::<u32>(),
            any::<u64>(),
            proptest::option::of(any::<[u8; 16]>())
        )
            .prop_map(|(boot_count, lifetime_units, last)| Record::Counters {
                boot_count,
                lifetime_units,
                // all zeros is "none" on the medium
                last_final: last.filter(|id| *id != [0; 16]).map(SessionId::from_bytes),
            }),
        (any::<u32>(), any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(|(epoch, key, previous)| {
            Record::Key(blepay_device_client::journal::KeyRecord {
                epoch: blepay_core::KeyEpoch::new(epoch),
                key,
                previous,
            })
        }),
    ]
}

proptest! {
    #[test]
    fn the_record_decoder_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = Record::decode(&bytes);
    }

    #[test]
    fn the_log_decoder_never_panics_and_never_reads_past_the_end(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let (records, valid) = decode_log(&bytes);
        let count = records.len();
        prop_assert!(valid <= bytes.len());
        prop_assert!(records.iter().map(|r| r.len()).sum::<usize>() <= valid);
        drop(records);
        let mut log = MemLog::from_bytes(bytes);
        let recovered = log.recover().unwrap();
        prop_assert_eq!(log.used_bytes(), valid);
        prop_assert_eq!(recovered.len(), count);
    }

    #[test]
    fn records_round_trip_through_the_log(records in proptest::collection::vec(record(), 0..8), junk in proptest::collection::vec(any::<u8>(), 0..40)) {
        let mut bytes = Vec::new();
        for r in &records {
            bytes.extend(encode_record(&r.encode()).unwrap());
        }
        let clean = bytes.len();
        // garbage after the last record (a torn append) is not read as records, unless it is one
        bytes.extend(&junk);
        let (decoded, valid) = decode_log(&bytes);
        prop_assert!(valid >= clean);
        let back: Vec<Record> = decoded.iter().take(records.len()).map(|p| Record::decode(p).unwrap()).collect();
        prop_assert_eq!(back, records);
    }
}
