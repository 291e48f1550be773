//! The results: one row per phase, the table printed, and the JSON summary (its keys are what
//! docs/performance.md quotes).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Value, json};

use super::measure::Figures;

/// One row of the results.
pub(super) struct Row {
    pub(super) name: String,
    pub(super) figures: Figures,
    /// Requests per operation (3 for a cycle: pay, press, final report).
    pub(super) requests: u64,
    pub(super) baseline_rps: f64,
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
        "{:<20} {:>10} {:>10} {:>9} {:>9} {:>9} {:>7}",
        "phase", "ops/s", "req/s", "p50 ms", "p99 ms", "ratio", "errors"
    );
    if dynamo {
        let _ = write!(out, " {:>12}", "ddb req/op");
    }
    let _ = writeln!(out);
    for r in rows {
        let _ = write!(
            out,
            "{:<20} {:>10.0} {:>10.0} {:>9.2} {:>9.2} {:>9.3} {:>7}",
            r.name,
            r.figures.rps(),
            r.req_rps(),
            r.figures.ms(0.5),
            r.figures.ms(0.99),
            r.ratio(),
            r.figures.errors
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

pub(super) fn summary_json(
    store: &str,
    rows: &[Row],
    concurrency: usize,
    machines: usize,
    secs: u64,
    reconciles: bool,
) -> Value {
    let mut o = serde_json::Map::new();
    o.insert("store".into(), json!(store));
    o.insert("concurrency".into(), json!(concurrency));
    o.insert("machines".into(), json!(machines));
    o.insert("duration_secs".into(), json!(secs));
    let mut errors = 0;
    for r in rows {
        errors += r.figures.errors;
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
    }
    o.insert("errors".into(), json!(errors));
    o.insert("ledger_reconciles".into(), json!(reconciles));
    Value::Object(o)
}
