//! `blepay bench --quick`'s last stdout line is a contract (issue 14): one JSON object with the
//! flat figures at `--concurrency` clients, the HTTP curve at every `--clients` count, the
//! server's CPU time and bytes written per operation, and the idle fleet's figures. Not a timing
//! test: it runs the real binary once, small (two client counts, a few hundred idle machines), and
//! checks that the keys are there and that the figures agree with each other.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use serde_json::Value;

fn close(a: f64, b: f64) -> bool {
    // The summary rounds every figure to three decimals before deriving none of them, so two
    // figures derived from one another agree to within that rounding, scaled.
    (a - b).abs() <= 1e-3 * a.abs().max(b.abs()).max(1.0)
}

fn f(o: &Value, k: &str) -> f64 {
    o[k].as_f64()
        .unwrap_or_else(|| panic!("{k} missing or not a number: {o}"))
}

/// Run `blepay bench`, small and with 1 s phases; its last line.
fn run_bench_quick() -> Value {
    common::bench_last_json(&[
        // `--quick` only sets the phases to 3 s; 1 s phases print the same keys.
        "--duration",
        "1",
        "--clients",
        "1,2",
        "--concurrency",
        "2",
        "--machines",
        "8",
        "--fleet-machines",
        "300",
        "--fleet-clients",
        "8",
    ])
}

#[test]
fn bench_quick_prints_the_curve_and_the_idle_fleet_in_its_last_json_line() {
    // Act
    let v = &run_bench_quick();

    // Assert: the run was clean...
    assert_eq!(v["errors"], 0, "{v}");
    assert_eq!(v["ledger_reconciles"], true, "{v}");
    // ...the flat keys of the summary are there, at `--concurrency` clients...
    for k in [
        "baseline_rps",
        "verify_rps",
        "verify_ratio",
        "pay_rps",
        "pay_ratio",
        "verify_p99_ms",
        "pay_p99_ms",
        "cycle_rps",
        "grpc_verify_rps",
        "grpc_pay_rps",
    ] {
        assert!(f(v, k) >= 0.0, "{k}: {v}");
    }
    assert_eq!(v["concurrency"], 2);
    assert_eq!(v["clients"], serde_json::json!([1, 2]));
    // ...the curve has one point per client count, in order, and its point at `--concurrency`
    // is the flat keys' figures...
    for (op, flat) in [
        ("baseline", "baseline"),
        ("verify", "verify"),
        ("pay", "pay"),
        ("cycle", "cycle"),
    ] {
        let points = v["curve"][op]
            .as_array()
            .unwrap_or_else(|| panic!("curve.{op}: {v}"));
        let clients: Vec<u64> = points
            .iter()
            .map(|p| p["clients"].as_u64().unwrap())
            .collect();
        assert_eq!(clients, [1, 2], "curve.{op}");
        let at = &points[1];
        assert!(
            close(f(at, "rps"), f(v, &format!("{flat}_rps"))),
            "{op}: {at}"
        );
        assert!(
            close(f(at, "p99_ms"), f(v, &format!("{flat}_p99_ms"))),
            "{op}: {at}"
        );
        for p in points {
            assert!(f(p, "p50_ms") <= f(p, "p99_ms"), "{op}: {p}");
            assert_eq!(p["errors"], 0, "{op}: {p}");
            // The server's CPU is part of the process's (clients and server share it).
            assert!(f(p, "server_cpu_us") > 0.0, "{op}: {p}");
            assert!(
                f(p, "server_cpu_us") <= f(p, "process_cpu_us") + 1e-9,
                "{op}: {p}"
            );
            assert!(f(p, "write_bytes") >= 0.0, "{op}: {p}");
        }
    }
    // ...a payment (the cycle) is costed: CPU, bytes written, bytes kept...
    assert!(close(
        f(v, "server_cpu_us_per_payment"),
        f(&v["curve"]["cycle"][1], "server_cpu_us")
    ));
    assert!(f(v, "write_bytes_per_payment") > 0.0, "{v}");
    assert!(f(v, "storage_bytes_per_payment") > 0.0, "{v}");
    // ...and the idle fleet's figures agree.
    assert_fleet(v);
}

/// The idle fleet: every machine heartbeat twice (boot, then the next interval),
/// without an error, and its per-machine figures follow from its per-heartbeat ones.
fn assert_fleet(v: &Value) {
    assert_eq!(v["fleet_machines"], 300);
    assert_eq!(v["fleet_boot_heartbeats"], 300);
    assert_eq!(v["fleet_heartbeats"], 300);
    assert_eq!(v["fleet_heartbeat_errors"], 0);
    assert_eq!(v["fleet_heartbeat_secs"], 1800);
    let per_month = 30.0 * 24.0 * 3600.0 / 1800.0;
    let cpu_us = f(v, "fleet_server_cpu_us_per_heartbeat");
    assert!(cpu_us > 0.0, "{v}");
    assert!(
        cpu_us <= f(v, "fleet_process_cpu_us_per_heartbeat") + 1e-9,
        "{v}"
    );
    assert!(close(
        f(v, "fleet_server_cpu_secs_per_machine_month"),
        cpu_us * per_month / 1e6
    ));
    assert!(close(
        f(v, "fleet_write_bytes_per_machine_month"),
        f(v, "fleet_write_bytes_per_heartbeat") * per_month
    ));
    assert!(f(v, "fleet_storage_bytes_per_machine") > 0.0, "{v}");
    assert!(close(
        f(v, "fleet_storage_bytes_per_machine_month"),
        f(v, "fleet_storage_bytes_per_machine")
            + f(v, "fleet_storage_bytes_per_heartbeat") * per_month
    ));
    assert!(
        (f(v, "fleet_idle_machines_per_server") - f(v, "fleet_heartbeats_per_sec") * 1800.0).abs()
            <= 2.0,
        "{v}"
    );
    assert!(f(v, "fleet_idle_machines_per_server_by_cpu") > 0.0, "{v}");
}
