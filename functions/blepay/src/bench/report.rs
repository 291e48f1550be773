//! The results: one row per phase and client count, the table printed, and the JSON summary (its
//! keys are what docs/performance.md quotes): the flat keys at `--concurrency` clients, the HTTP
//! curve under `curve`, the idle fleet under `fleet_*`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Value, json};

use super::idle::{self, HEARTBEAT_SECS, HEARTBEATS_PER_MONTH, IdleFleet};
use super::measure::Figures;

/// One row of the results.
pub(super) struct Row {
    /// `HTTP verify`, `gRPC cycle`, ...: the transport, a space, the phase.
    pub(super) name: String,
    /// Concurrent clients.
    pub(super) clients: usize,
    pub(super) figures: Figures,
    /// Requests per operation (3 for a cycle: pay, press, final report).
    pub(super) requests: u64,
    pub(super) baseline_rps: f64,
    /// Database bytes at rest added per operation (the cycle, on SQLite).
    pub(super) storage_per_op: Option<f64>,
    /// SQLite operations per commit (fsync) during the phase: the group commit's batch size
    /// (pay: the untimed settling included).
    pub(super) ops_per_commit: Option<f64>,
}

impl Row {
    #[allow(clippy::cast_precision_loss)]
    pub(super) fn req_rps(&self) -> f64 {
        self.figures.rps() * self.requests as f64
    }
    pub(super) fn ratio(&self) -> f64 {
        if self.baseline_rps > 0.0 {
            self.req_rps() / self.baseline_rps
        } else {
            0.0
        }
    }
}

pub(super) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

pub(super) fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    // The DynamoDB column only when the store is DynamoDB.
    let dynamo = rows.iter().any(|r| r.figures.db.is_some());
    let _ = write!(
        out,
        "{:<20} {:>7} {:>10} {:>10} {:>9} {:>9} {:>9} {:>7} {:>11} {:>11} {:>11}",
        "phase",
        "clients",
        "ops/s",
        "req/s",
        "p50 ms",
        "p99 ms",
        "ratio",
        "errors",
        "srv cpu µs",
        "of it sys",
        "written B"
    );
    if dynamo {
        let _ = write!(out, " {:>12}", "ddb req/op");
    }
    let _ = writeln!(out);
    for r in rows {
        let _ = write!(
            out,
            "{:<20} {:>7} {:>10.0} {:>10.0} {:>9.2} {:>9.2} {:>9.3} {:>7} {:>11} {:>11} {:>11}",
            r.name,
            r.clients,
            r.figures.rps(),
            r.req_rps(),
            r.figures.ms(0.5),
            r.figures.ms(0.99),
            r.ratio(),
            r.figures.errors,
            opt(r.figures.server_cpu_us_per_op(), 1),
            opt(r.figures.server_sys_us_per_op(), 1),
            opt(r.figures.write_bytes_per_op(), 0),
        );
        if dynamo {
            match r.figures.db_per_op() {
                Some(x) => {
                    let _ = write!(out, " {x:>12.3}");
                }
                None => {
                    let _ = write!(out, " {:>12}", "-");
                }
            }
        }
        let _ = writeln!(out);
    }
    for r in rows {
        if let Some(by_op) = db_by_operation(&r.figures) {
            let parts: Vec<String> = by_op.iter().map(|(op, x)| format!("{op} {x:.3}")).collect();
            let _ = writeln!(
                out,
                "{}: DynamoDB requests per operation by API call ({} operations): {}",
                r.name,
                r.figures.all_ops,
                parts.join(", ")
            );
        }
    }
    out
}

/// A figure with `digits` decimals, or `-` when it was not measured.
fn opt(x: Option<f64>, digits: usize) -> String {
    x.map_or_else(|| "-".to_owned(), |x| format!("{x:.digits$}"))
}

/// The idle fleet's lines of the table.
pub(super) fn fleet_table(f: &IdleFleet) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "idle fleet: {} machines ({} clients), one heartbeat each per interval of {HEARTBEAT_SECS} s, compressed",
        f.machines, f.clients
    );
    for (name, x) in [("boot interval", &f.boot), ("next interval", &f.steady)] {
        let _ = writeln!(
            out,
            "  {name}: {:.0} heartbeats/s, p50 {:.2} ms, p99 {:.2} ms, {} errors; server CPU {} µs ({} in the kernel) and {} bytes written per heartbeat",
            x.rps(),
            x.ms(0.5),
            x.ms(0.99),
            x.errors,
            opt(x.server_cpu_us_per_op(), 1),
            opt(x.server_sys_us_per_op(), 1),
            opt(x.write_bytes_per_op(), 0),
        );
    }
    let _ = writeln!(
        out,
        "  per idle machine: {} server CPU-seconds a month ({HEARTBEATS_PER_MONTH} heartbeats), {} bytes at rest registered, {} per heartbeat, {} after a month",
        opt(idle::server_cpu_secs_per_machine_month(f), 3),
        opt(f.storage_per_machine(), 0),
        opt(f.storage_per_heartbeat(), 0),
        opt(f.storage_per_machine_month(), 0),
    );
    let _ = writeln!(
        out,
        "  one server ({} cores) carries {:.0} idle machines at the rate it sustained here (clients on the same cores), {} if its CPU were the only limit",
        f.server_threads,
        f.machines_per_server(),
        opt(f.machines_per_server_by_cpu(), 0),
    );
    out
}

/// DynamoDB requests per operation run, by DynamoDB API call (`--store dynamodb`).
#[allow(clippy::cast_precision_loss)]
pub(super) fn db_by_operation(f: &Figures) -> Option<BTreeMap<String, f64>> {
    let db = f.db.as_ref()?;
    if f.all_ops == 0 {
        return None;
    }
    Some(
        db.by_operation
            .iter()
            .map(|(op, n)| (op.clone(), *n as f64 / f.all_ops as f64))
            .collect(),
    )
}

/// The run's parameters.
pub(super) struct Params<'a> {
    pub(super) store: &'a str,
    pub(super) concurrency: usize,
    pub(super) clients: &'a [usize],
    pub(super) machines: usize,
    pub(super) secs: u64,
    pub(super) server_threads: usize,
    pub(super) reconciles: bool,
}

pub(super) fn summary_json(p: &Params<'_>, rows: &[Row], fleet: Option<&IdleFleet>) -> Value {
    let mut o = serde_json::Map::new();
    o.insert("store".into(), json!(p.store));
    o.insert("concurrency".into(), json!(p.concurrency));
    o.insert("clients".into(), json!(p.clients));
    o.insert("machines".into(), json!(p.machines));
    o.insert("duration_secs".into(), json!(p.secs));
    o.insert("server_threads".into(), json!(p.server_threads));
    let mut errors = 0;
    for r in rows {
        errors += r.figures.errors;
    }
    // The flat keys: every phase at `--concurrency` clients.
    for r in rows.iter().filter(|r| r.clients == p.concurrency) {
        let (transport, op) = r.name.split_once(' ').unwrap_or(("", ""));
        let prefix = if transport == "gRPC" { "grpc_" } else { "" };
        if op == "hello-world" {
            o.insert(
                format!("{prefix}baseline_rps"),
                json!(round3(r.figures.rps())),
            );
            o.insert(
                format!("{prefix}baseline_p99_ms"),
                json!(round3(r.figures.ms(0.99))),
            );
            continue;
        }
        o.insert(format!("{prefix}{op}_rps"), json!(round3(r.figures.rps())));
        if r.requests > 1 {
            o.insert(format!("{prefix}{op}_req_rps"), json!(round3(r.req_rps())));
        }
        o.insert(format!("{prefix}{op}_ratio"), json!(round3(r.ratio())));
        o.insert(
            format!("{prefix}{op}_p50_ms"),
            json!(round3(r.figures.ms(0.5))),
        );
        o.insert(
            format!("{prefix}{op}_p99_ms"),
            json!(round3(r.figures.ms(0.99))),
        );
        o.insert(
            format!("{prefix}{op}_server_cpu_us"),
            num(r.figures.server_cpu_us_per_op()),
        );
        o.insert(
            format!("{prefix}{op}_write_bytes"),
            num(r.figures.write_bytes_per_op()),
        );
        if let Some(x) = r.figures.db_per_op() {
            o.insert(
                format!("{prefix}dynamodb_requests_per_{op}"),
                json!(round3(x)),
            );
        }
        if let Some(by_op) = db_by_operation(&r.figures) {
            let by_op: serde_json::Map<String, Value> = by_op
                .into_iter()
                .map(|(k, v)| (k, json!(round3(v))))
                .collect();
            o.insert(
                format!("{prefix}dynamodb_requests_per_{op}_by_operation"),
                Value::Object(by_op),
            );
        }
        // A payment is a full cycle: pay, press (the start), final report.
        if prefix.is_empty() && op == "cycle" {
            o.insert(
                "server_cpu_us_per_payment".into(),
                num(r.figures.server_cpu_us_per_op()),
            );
            o.insert(
                "server_sys_us_per_payment".into(),
                num(r.figures.server_sys_us_per_op()),
            );
            o.insert(
                "process_cpu_us_per_payment".into(),
                num(r.figures.process_cpu_us_per_op()),
            );
            o.insert(
                "write_bytes_per_payment".into(),
                num(r.figures.write_bytes_per_op()),
            );
            o.insert("storage_bytes_per_payment".into(), num(r.storage_per_op));
        }
    }
    o.insert("curve".into(), curve(rows));
    if let Some(f) = fleet {
        fleet_json(&mut o, f);
    }
    o.insert("errors".into(), json!(errors));
    o.insert("ledger_reconciles".into(), json!(p.reconciles));
    Value::Object(o)
}

fn num(x: Option<f64>) -> Value {
    x.map_or(Value::Null, |x| json!(round3(x)))
}

/// The HTTP phases at each client count: `{"verify": [{"clients": 1, ...}, ...], ...}`.
fn curve(rows: &[Row]) -> Value {
    let mut c = serde_json::Map::new();
    for r in rows {
        let Some(("HTTP", op)) = r.name.split_once(' ') else {
            continue;
        };
        let key = if op == "hello-world" { "baseline" } else { op };
        let mut point = serde_json::Map::new();
        point.insert("clients".into(), json!(r.clients));
        point.insert("rps".into(), json!(round3(r.figures.rps())));
        if r.requests > 1 {
            point.insert("req_rps".into(), json!(round3(r.req_rps())));
        }
        point.insert("ratio".into(), json!(round3(r.ratio())));
        point.insert("p50_ms".into(), json!(round3(r.figures.ms(0.5))));
        point.insert("p99_ms".into(), json!(round3(r.figures.ms(0.99))));
        point.insert("errors".into(), json!(r.figures.errors));
        point.insert(
            "server_cpu_us".into(),
            num(r.figures.server_cpu_us_per_op()),
        );
        point.insert(
            "server_sys_us".into(),
            num(r.figures.server_sys_us_per_op()),
        );
        point.insert(
            "process_cpu_us".into(),
            num(r.figures.process_cpu_us_per_op()),
        );
        point.insert("write_bytes".into(), num(r.figures.write_bytes_per_op()));
        point.insert(
            "server_cores".into(),
            num(r.figures.cost.map(|c| c.server_cores())),
        );
        if r.storage_per_op.is_some() {
            point.insert("storage_bytes".into(), num(r.storage_per_op));
        }
        if r.ops_per_commit.is_some() {
            point.insert("sqlite_ops_per_commit".into(), num(r.ops_per_commit));
        }
        if let Value::Array(points) = c
            .entry(key.to_owned())
            .or_insert_with(|| Value::Array(Vec::new()))
        {
            points.push(Value::Object(point));
        }
    }
    Value::Object(c)
}

#[allow(clippy::cast_precision_loss)]
fn fleet_json(o: &mut serde_json::Map<String, Value>, f: &IdleFleet) {
    let s = &f.steady;
    let mut put = |k: &str, v: Value| {
        o.insert(format!("fleet_{k}"), v);
    };
    put("machines", json!(f.machines));
    put("clients", json!(f.clients));
    put("heartbeat_secs", json!(HEARTBEAT_SECS));
    put("register_secs", json!(round3(f.register_secs)));
    put("boot_heartbeats", json!(f.boot.ops));
    put("boot_heartbeats_per_sec", json!(round3(f.boot.rps())));
    put("boot_p99_ms", json!(round3(f.boot.ms(0.99))));
    put(
        "boot_server_cpu_us_per_heartbeat",
        num(f.boot.server_cpu_us_per_op()),
    );
    put("heartbeats", json!(s.ops));
    put("heartbeat_errors", json!(s.errors + f.boot.errors));
    put("heartbeat_interval_secs", json!(round3(s.secs)));
    put("heartbeats_per_sec", json!(round3(s.rps())));
    put("heartbeat_p50_ms", json!(round3(s.ms(0.5))));
    put("heartbeat_p99_ms", json!(round3(s.ms(0.99))));
    put("server_cpu_us_per_heartbeat", num(s.server_cpu_us_per_op()));
    put(
        "process_cpu_us_per_heartbeat",
        num(s.process_cpu_us_per_op()),
    );
    put("server_cores", num(s.cost.map(|c| c.server_cores())));
    put(
        "server_cpu_secs_per_machine_month",
        num(idle::server_cpu_secs_per_machine_month(f)),
    );
    put("write_bytes_per_heartbeat", num(s.write_bytes_per_op()));
    put(
        "write_bytes_per_machine_month",
        num(s
            .write_bytes_per_op()
            .map(|b| b * HEARTBEATS_PER_MONTH as f64)),
    );
    put("storage_bytes_per_machine", num(f.storage_per_machine()));
    put(
        "storage_bytes_per_heartbeat",
        num(f.storage_per_heartbeat()),
    );
    put(
        "storage_bytes_per_machine_month",
        num(f.storage_per_machine_month()),
    );
    put(
        "idle_machines_per_server",
        json!(f.machines_per_server().round()),
    );
    put(
        "idle_machines_per_server_by_cpu",
        num(f.machines_per_server_by_cpu().map(f64::round)),
    );
}
