//! The back office's lists, statements and sales report (issue 11, item 7), and the phone's own
//! history: filters, pages that never skip or repeat, CSV an accountant can open (parsed back
//! here), sums that match the ledger, a phone seeing only its own sessions and entries, and the
//! same over gRPC.

use std::collections::BTreeSet;

use blepay_device_client::Status;
use blepay_e2e::{TestApp, TestMachine, spawn_app, unix_now};
use blepay_proto::pb::v1 as pb;
use blepay_proto::pb::v1::ops_service_client::OpsServiceClient;
use blepay_proto::pb::v1::phone_service_client::PhoneServiceClient;
use blepay_store::decide::DAY_SECS;
use serde_json::Value;

fn num(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap(),
        Value::Number(n) => n.as_i64().unwrap(),
        Value::Null => 0,
        other => panic!("not a number: {other}"),
    }
}

/// Pay on `m` for `user`, press, report `units` final: a SETTLED session; its id.
async fn settled(app: &TestApp, m: &TestMachine, user: &str, units: u64, key: &str) -> String {
    let paid = app.pay(user, &m.advert(), 200, key).await.ok();
    let grant = m.machine.press().await.unwrap();
    let done = m.machine.report(grant.session, units, true).await.unwrap();
    assert!(matches!(done.status, Status::Known(_)));
    paid["sessionId"].as_str().unwrap().to_owned()
}

/// Every page of `path` (a list answering `sessions` and `nextCursor`) with `limit`.
async fn pages(app: &TestApp, path: &str, token: &str, field: &str, limit: u32) -> Vec<Value> {
    let sep = if path.contains('?') { '&' } else { '?' };
    let mut out = Vec::new();
    let mut cursor = String::new();
    for _ in 0..50 {
        let page = app
            .get(&format!("{path}{sep}limit={limit}&cursor={cursor}"), token)
            .await
            .ok();
        let items = page[field].as_array().cloned().unwrap_or_default();
        assert!(items.len() <= limit as usize);
        out.extend(items);
        match page["nextCursor"].as_str() {
            Some(c) if !c.is_empty() => c.clone_into(&mut cursor),
            _ => return out,
        }
    }
    panic!("the list never ended");
}

fn ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|s| s["sessionId"].as_str().unwrap().to_owned())
        .collect()
}

async fn csv_get(
    app: &TestApp,
    path: &str,
    token: &str,
) -> (String, Vec<csv::StringRecord>, csv::StringRecord) {
    let r = app
        .client
        .get(app.url(path))
        .bearer_auth(token)
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
    let body = r.bytes().await.unwrap();
    let mut reader = csv::ReaderBuilder::new().from_reader(body.as_ref());
    let header = reader.headers().unwrap().clone();
    let rows = reader.records().map(Result::unwrap).collect();
    (ct, rows, header)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_lists_sessions_by_machine_user_and_status_in_pages_that_never_skip_or_repeat()
{
    // Arrange: alice settles on machine 1 then leaves one waiting on machine 2; bob waits on 3.
    let app = spawn_app().await;
    let (m1, m2, m3) = (
        app.online_machine(25).await,
        app.online_machine(25).await,
        app.online_machine(25).await,
    );
    app.top_up("alice", 1000).await;
    app.top_up("bob", 1000).await;
    let s1 = settled(&app, &m1, "alice", 3, "a-1").await;
    let s2 = app
        .pay("alice", &m2.advert(), 100, "a-2")
        .await
        .str("sessionId");
    let s3 = app
        .pay("bob", &m3.advert(), 100, "b-1")
        .await
        .str("sessionId");
    let ops = app.ops_token.clone();

    // Act + Assert: every page size gives the same three, newest first.
    let all = ids(&pages(&app, "/v1/ops/sessions", &ops, "sessions", 500).await);
    assert_eq!(
        all.iter().collect::<BTreeSet<_>>(),
        [&s1, &s2, &s3].into_iter().collect()
    );
    let listed = pages(&app, "/v1/ops/sessions", &ops, "sessions", 500).await;
    let created: Vec<i64> = listed.iter().map(|s| num(&s["createdAt"])).collect();
    assert!(
        created.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {created:?}"
    );
    for limit in [1, 2] {
        assert_eq!(
            ids(&pages(&app, "/v1/ops/sessions", &ops, "sessions", limit).await),
            all
        );
    }
    let by = |q: &str| format!("/v1/ops/sessions?{q}");
    let device = format!("deviceId={}", m1.device_id);
    assert_eq!(
        ids(&pages(&app, &by(&device), &ops, "sessions", 10).await),
        vec![s1.clone()]
    );
    let alices = ids(&pages(&app, &by("userId=alice"), &ops, "sessions", 1).await);
    let want: Vec<String> = all.iter().filter(|s| **s != s3).cloned().collect();
    assert_eq!(alices, want, "alice's two, in the list's order");
    assert_eq!(
        ids(&pages(&app, &by("status=SETTLED"), &ops, "sessions", 10).await),
        vec![s1.clone()]
    );
    assert_eq!(
        ids(&pages(
            &app,
            &by("status=AUTHORIZED&userId=bob"),
            &ops,
            "sessions",
            10
        )
        .await),
        vec![s3.clone()]
    );
    let later = format!("from={}", unix_now() + 3600);
    assert!(
        pages(&app, &by(&later), &ops, "sessions", 10)
            .await
            .is_empty()
    );
    let settled_one = &pages(&app, &by("status=SETTLED"), &ops, "sessions", 10).await[0];
    assert_eq!(
        (num(&settled_one["amount"]), settled_one["status"].as_str()),
        (75, Some("SETTLED"))
    );

    // Bad filters are refused with a code naming them, and a phone is not an operator.
    for q in [
        "status=DONE",
        "deviceId=xyz",
        "from=9&to=1",
        "limit=0",
        "cursor=%%%",
        "colour=red",
    ] {
        app.get(&by(q), &ops)
            .await
            .assert_error(400, "INVALID_ARGUMENT");
    }
    app.get("/v1/ops/sessions", &app.token_for("alice"))
        .await
        .assert_error(401, "UNAUTHENTICATED");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_phone_sees_only_its_own_sessions_and_ledger_newest_first() {
    // Arrange
    let app = spawn_app().await;
    let (m1, m2) = (app.online_machine(25).await, app.online_machine(25).await);
    app.top_up("alice", 1000).await;
    app.top_up("bob", 500).await;
    let mine = settled(&app, &m1, "alice", 4, "a-1").await;
    let theirs = app
        .pay("bob", &m2.advert(), 100, "b-1")
        .await
        .str("sessionId");
    let alice = app.token_for("alice");

    // Act
    let sessions = ids(&pages(&app, "/v1/sessions", &alice, "sessions", 1).await);
    let ledger = pages(&app, "/v1/wallet/ledger", &alice, "entries", 2).await;

    // Assert: alice's session only; her top-up, hold, capture and release, each touching her.
    assert_eq!(sessions, vec![mine.clone()]);
    assert!(!sessions.contains(&theirs));
    let kinds: BTreeSet<&str> = ledger.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["CAPTURE", "HOLD", "RELEASE", "TOPUP"]
            .into_iter()
            .collect()
    );
    let at: Vec<i64> = ledger.iter().map(|e| num(&e["at"])).collect();
    assert!(at.windows(2).all(|w| w[0] >= w[1]), "newest first: {at:?}");
    for e in &ledger {
        let accounts = [e["debit"].as_str().unwrap(), e["credit"].as_str().unwrap()];
        assert!(
            accounts.contains(&"available:alice") || accounts.contains(&"held:alice"),
            "{e}"
        );
        if e["kind"] != "TOPUP" {
            assert_eq!(e["sessionId"].as_str(), Some(mine.as_str()));
        }
        assert_eq!(e["currency"], "EUR");
    }
    let available: i64 = ledger.iter().map(|e| num(&e["availableDelta"])).sum();
    assert_eq!(available, num(&app.wallet("alice").await["available"]));
    assert_eq!(available, 900);
    // The operator's view of her statement is the same.
    let ops_view = pages(
        &app,
        "/v1/ops/wallets/alice/ledger",
        &app.ops_token,
        "entries",
        500,
    )
    .await;
    assert_eq!(ops_view, ledger);
    // Bob's history holds nothing of alice's.
    let bobs = pages(
        &app,
        "/v1/wallet/ledger",
        &app.token_for("bob"),
        "entries",
        10,
    )
    .await;
    assert!(
        bobs.iter()
            .all(|e| e["sessionId"].as_str() != Some(mine.as_str()))
    );
    app.get("/v1/wallet/ledger?limit=501", &alice)
        .await
        .assert_error(400, "INVALID_ARGUMENT");
    assert!(app.audit().await.reconciles());
}

#[tokio::test(flavor = "multi_thread")]
async fn lists_statements_and_the_report_come_as_csv_that_parses_back_with_formulas_defused() {
    // Arrange: a user whose id a spreadsheet would read as a formula.
    let app = spawn_app().await;
    let m = app.online_machine(25).await;
    app.top_up("@eve", 1000).await;
    let sid = settled(&app, &m, "@eve", 2, "e-1").await;
    let ops = app.ops_token.clone();

    // Act
    let (ct, rows, header) = csv_get(&app, "/v1/ops/sessions?userId=%40eve", &ops).await;
    let (_, entries, entry_header) = csv_get(&app, "/v1/ops/wallets/%40eve/ledger", &ops).await;
    let today = blepay_service::reports::format_day(unix_now() / DAY_SECS);
    let (_, sales, sales_header) = csv_get(
        &app,
        &format!("/v1/ops/reports/sales?from={today}&to={today}"),
        &ops,
    )
    .await;

    // Assert: RFC 4180 with a header row; text that starts a formula is prefixed with '.
    assert!(ct.starts_with("text/csv"), "{ct}");
    assert_eq!(&header[0], "session_id");
    assert_eq!(rows.len(), 1);
    let col = |h: &csv::StringRecord, name: &str| h.iter().position(|c| c == name).unwrap();
    assert_eq!(&rows[0][col(&header, "session_id")], sid);
    assert_eq!(&rows[0][col(&header, "user_id")], "'@eve");
    assert_eq!(&rows[0][col(&header, "amount")], "50");
    assert_eq!(&rows[0][col(&header, "currency")], "EUR");
    assert_eq!(&rows[0][col(&header, "status")], "SETTLED");
    assert_eq!(entries.len(), 4);
    let deltas: i64 = entries
        .iter()
        .map(|r| {
            r[col(&entry_header, "available_delta")]
                .parse::<i64>()
                .unwrap()
        })
        .sum();
    assert_eq!(deltas, 950);
    assert!(
        entries
            .iter()
            .any(|r| &r[col(&entry_header, "credit")] == "available:@eve")
    );
    assert_eq!(&sales_header[0], "day");
    assert_eq!(sales.len(), 1);
    assert_eq!(
        (
            &sales[0][0],
            &sales[0][1],
            &sales[0][4],
            &sales[0][5],
            &sales[0][6],
            &sales[0][7]
        ),
        (today.as_str(), m.device_id.as_str(), "50", "0", "50", "EUR")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sales_report_sums_each_machine_per_day_and_matches_the_revenue() {
    // Arrange: two machines, three sessions (one never started).
    let app = spawn_app().await;
    let (m1, m2) = (app.online_machine(25).await, app.online_machine(10).await);
    app.top_up("ann", 1000).await;
    app.top_up("ben", 1000).await;
    settled(&app, &m1, "ann", 3, "a-1").await;
    settled(&app, &m1, "ann", 1, "a-2").await;
    settled(&app, &m2, "ben", 7, "b-1").await;
    app.pay("ben", &m1.advert(), 100, "b-2").await.ok();
    let today = blepay_service::reports::format_day(unix_now() / DAY_SECS);

    // Act
    let report = app
        .get(
            &format!("/v1/ops/reports/sales?from={today}&to={today}"),
            &app.ops_token,
        )
        .await
        .ok();

    // Assert
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{report}");
    let row = |d: &str| rows.iter().find(|r| r["deviceId"] == d).unwrap();
    let (r1, r2) = (row(&m1.device_id), row(&m2.device_id));
    assert_eq!(
        (
            num(&r1["sessions"]),
            num(&r1["units"]),
            num(&r1["captured"]),
            num(&r1["net"])
        ),
        (3, 4, 100, 100)
    );
    assert_eq!(
        (
            num(&r2["sessions"]),
            num(&r2["captured"]),
            num(&r2["refunded"])
        ),
        (1, 70, 0)
    );
    assert_eq!(r1["day"], today.as_str());
    let audit = app.audit().await;
    assert!(audit.reconciles());
    assert_eq!(num(&report["totals"]["captured"]), audit.revenue);
    assert_eq!(num(&report["totals"]["net"]), audit.revenue);
    // The metrics counted the three settlements by the machines' final reports.
    let metrics = app.get("/metrics", &app.ops_token).await;
    assert_eq!(metrics.status, 200);
    let text = metrics.body.as_str().unwrap_or_default().to_owned();
    assert!(
        text.contains("blepay_sessions_settled_total{closed_by=\"report\"} 3"),
        "{text}"
    );
    // The range is checked.
    for q in [
        "from=2026-02-30&to=2026-03-01",
        "from=2026-03-02&to=2026-03-01",
        "from=2025-01-01&to=2026-01-02",
        "from=2026-01-01",
    ] {
        app.get(&format!("/v1/ops/reports/sales?{q}"), &app.ops_token)
            .await
            .assert_error(400, "INVALID_ARGUMENT");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_lists_the_statement_and_the_report_are_served_over_grpc_too() {
    // Arrange
    let app = spawn_app().await;
    let m = app.online_machine(25).await;
    app.top_up("gus", 1000).await;
    let sid = settled(&app, &m, "gus", 2, "g-1").await;
    let channel = tonic::transport::Endpoint::from_shared(app.address.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let authed = |msg, token: &str| {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        r
    };
    let mut ops = OpsServiceClient::new(channel.clone());
    let mut phone = PhoneServiceClient::new(channel);

    // Act
    let list = ops
        .list_sessions(authed(
            pb::ListSessionsRequest {
                user_id: "gus".into(),
                ..Default::default()
            },
            &app.ops_token,
        ))
        .await
        .unwrap()
        .into_inner();
    let mine = phone
        .list_my_sessions({
            let mut r = tonic::Request::new(pb::ListMySessionsRequest {
                limit: 1,
                cursor: String::new(),
            });
            r.metadata_mut().insert(
                "authorization",
                format!("Bearer {}", app.token_for("gus")).parse().unwrap(),
            );
            r
        })
        .await
        .unwrap()
        .into_inner();
    let statement = ops
        .get_user_ledger({
            let mut r = tonic::Request::new(pb::OpsLedgerRequest {
                user_id: "gus".into(),
                limit: 0,
                cursor: String::new(),
            });
            r.metadata_mut().insert(
                "authorization",
                format!("Bearer {}", app.ops_token).parse().unwrap(),
            );
            r
        })
        .await
        .unwrap()
        .into_inner();
    let today = blepay_service::reports::format_day(unix_now() / DAY_SECS);
    let report = ops
        .get_sales_report({
            let mut r = tonic::Request::new(pb::SalesReportRequest {
                from: today.clone(),
                to: today,
            });
            r.metadata_mut().insert(
                "authorization",
                format!("Bearer {}", app.ops_token).parse().unwrap(),
            );
            r
        })
        .await
        .unwrap()
        .into_inner();
    let bad = ops
        .list_sessions(authed(
            pb::ListSessionsRequest {
                status: 99,
                ..Default::default()
            },
            &app.ops_token,
        ))
        .await
        .unwrap_err();

    // Assert
    assert_eq!(list.sessions.len(), 1);
    assert_eq!(list.sessions[0].session_id, sid);
    assert_eq!((mine.sessions.len(), mine.next_cursor.as_str()), (1, ""));
    assert_eq!(statement.entries.len(), 4);
    assert_eq!(
        statement
            .entries
            .iter()
            .map(|e| e.available_delta)
            .sum::<i64>(),
        950
    );
    assert_eq!(report.totals.unwrap().captured, 50);
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
}
