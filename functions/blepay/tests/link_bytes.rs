//! `blepay bench --link-bytes` is a contract (issue 9): its last stdout line is one JSON object
//! with the link figures, and the figures meet the budgets. Not a timing test: it runs the real
//! binary once (real server in-process, real SIM800 simulator) and checks keys and budgets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

#[test]
fn link_bytes_prints_its_figures_as_the_last_json_line_and_meets_the_budgets() {
    // Act
    let v = common::bench_last_json(&["--link-bytes"]);

    // Assert: the keys...
    let n = |k: &str| {
        v[k].as_u64()
            .unwrap_or_else(|| panic!("{k} missing or not a count: {v}"))
    };
    for k in [
        "link_press_tcp_sent",
        "link_press_tcp_received",
        "link_press_wire_bytes",
        "link_final_report_tcp_sent",
        "link_final_report_tcp_received",
        "link_final_report_wire_bytes",
        "link_heartbeat_tcp_sent",
        "link_heartbeat_tcp_received",
        "link_heartbeat_wire_bytes",
        "link_cycle_tcp_bytes",
        "link_cycle_bytes_binary_http",
        "link_cycle_bytes_json_http",
    ] {
        assert!(n(k) > 0, "{k}: {v}");
    }
    // ...the budgets: a short cycle is ≤ 2 exchanges and ≤ 2,000 bytes on the wire, an idle
    // month at the default heartbeat ≤ 1.5 MB...
    assert_eq!(n("link_cycle_exchanges"), 2);
    assert!(n("link_cycle_wire_bytes") <= 2_000, "{v}");
    assert_eq!(n("link_heartbeat_secs"), 1800);
    assert!(n("link_idle_month_wire_bytes") <= 1_500_000, "{v}");
    assert_eq!(v["link_budgets_met"], true, "{v}");
    // ...and the figures add up: the cycle is press + final report, TCP/IP adds to TCP bytes,
    // the month is 1,440 heartbeats.
    assert_eq!(
        n("link_cycle_wire_bytes"),
        n("link_press_wire_bytes") + n("link_final_report_wire_bytes")
    );
    assert_eq!(
        n("link_cycle_tcp_bytes"),
        n("link_press_tcp_sent")
            + n("link_press_tcp_received")
            + n("link_final_report_tcp_sent")
            + n("link_final_report_tcp_received")
    );
    assert!(n("link_cycle_wire_bytes") > n("link_cycle_tcp_bytes"));
    assert_eq!(n("link_heartbeats_per_month"), 1440);
    assert_eq!(
        n("link_idle_month_wire_bytes"),
        1440 * n("link_heartbeat_wire_bytes")
    );
    // The request a SIM800 sends carries its User-Agent and friends: well over the bare frame.
    assert!(
        n("link_press_tcp_sent") > n("link_press_frame_bytes") + 100,
        "{v}"
    );
}
