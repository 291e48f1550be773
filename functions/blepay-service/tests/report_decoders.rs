//! The back office's decoders on random input (issue 11, item 7): the list and report query
//! strings, dates, and the CSV cells — a stable INVALID_ARGUMENT naming the parameter, never a
//! panic; what decodes round-trips.

#![allow(clippy::unwrap_used)]

use blepay_service::ErrorCode;
use blepay_service::reports::{
    Cell, csv_document, format_day, guard_text, page_query, parse_day, report_range, sales_query,
    sessions_query,
};
use proptest::prelude::*;

const PARAMS: [&str; 7] = [
    "deviceId", "userId", "status", "from", "to", "limit", "cursor",
];

fn names_a_parameter(message: &str) -> bool {
    message.starts_with("unknown query parameter")
        || PARAMS.iter().any(|p| message.starts_with(&format!("{p}:")))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_session_query_decodes_or_names_what_is_wrong(q in ".{0,200}") {
        match sessions_query(Some(&q)) {
            Ok(req) => prop_assert!(blepay_service::reports::session_filter(&req).is_ok()),
            Err(e) => {
                prop_assert_eq!(e.code, ErrorCode::InvalidArgument);
                prop_assert!(names_a_parameter(&e.message), "{}", e.message);
            }
        }
    }

    #[test]
    fn session_query_lookalikes_decode_or_name_what_is_wrong(
        q in "((deviceId|userId|status|from|to|limit|cursor|x)=(d0000000000000[0-9a-f]{2}|alice|SETTLED|EXPIRED|AUTHORIZED|-?[0-9]{0,21}|[A-Za-z0-9_-]{0,30}|%[0-9A-F]{2})&?){0,5}"
    ) {
        match sessions_query(Some(&q)) {
            Ok(req) => {
                let f = blepay_service::reports::session_filter(&req).unwrap();
                if let (Some(a), Some(b)) = (f.from, f.to) {
                    prop_assert!(a <= b);
                }
            }
            Err(e) => {
                prop_assert_eq!(e.code, ErrorCode::InvalidArgument);
                prop_assert!(names_a_parameter(&e.message), "{}", e.message);
            }
        }
    }

    #[test]
    fn any_page_query_decodes_or_names_what_is_wrong(q in "((limit|cursor|y)=[A-Za-z0-9_=-]{0,12}&?){0,3}|.{0,80}") {
        match page_query(Some(&q)) {
            Ok((limit, _)) => prop_assert!(limit <= 500),
            Err(e) => {
                prop_assert_eq!(e.code, ErrorCode::InvalidArgument);
                prop_assert!(names_a_parameter(&e.message), "{}", e.message);
            }
        }
    }

    #[test]
    fn any_sales_query_decodes_or_names_what_is_wrong(q in "((from|to)=[0-9]{4}-[0-9]{2}-[0-9]{2}&?){0,3}|.{0,60}") {
        match sales_query(Some(&q)) {
            Ok(req) => {
                let (a, b) = report_range(&req.from, &req.to).unwrap();
                prop_assert!(a <= b && b - a < 366);
            }
            Err(e) => {
                prop_assert_eq!(e.code, ErrorCode::InvalidArgument);
                prop_assert!(names_a_parameter(&e.message), "{}", e.message);
            }
        }
    }

    #[test]
    fn a_date_that_parses_formats_back_to_itself(s in "[0-9]{4}-[0-9]{2}-[0-9]{2}|.{0,12}") {
        if let Ok(day) = parse_day(&s) {
            prop_assert_eq!(format_day(day), s);
        }
    }

    #[test]
    fn every_day_round_trips(day in 0u64..=2_932_896) {
        prop_assert_eq!(parse_day(&format_day(day)), Ok(day));
    }

    #[test]
    fn csv_cells_parse_back_and_never_start_a_formula(cells in proptest::collection::vec(".{0,20}", 1..6), n in any::<i64>()) {
        let row: Vec<Cell> = cells.iter().cloned().map(Cell::Text).chain([Cell::Num(n.into())]).collect();
        let header: Vec<String> = (0..row.len()).map(|i| format!("c{i}")).collect();
        let header: Vec<&str> = header.iter().map(String::as_str).collect();
        let doc = csv_document(&header, &[row]).unwrap();
        let mut reader = csv::ReaderBuilder::new().from_reader(doc.as_slice());
        let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        prop_assert_eq!(records.len(), 1);
        let got: Vec<&str> = records[0].iter().collect();
        prop_assert_eq!(got.len(), cells.len() + 1);
        for (cell, back) in cells.iter().zip(&got) {
            let guarded = guard_text(cell);
            prop_assert_eq!(*back, guarded.as_str());
            prop_assert!(!back.starts_with(['=', '+', '-', '@', '\t', '\r']));
        }
        let last = n.to_string();
        prop_assert_eq!(got[cells.len()], last.as_str());
    }
}
