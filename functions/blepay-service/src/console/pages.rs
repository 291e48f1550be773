//! The console's pages (GET): each reads through the same [`App`] methods as the JSON API.

use std::collections::BTreeMap;

use axum::extract::{Path, RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use blepay_core::DeviceId;
use blepay_proto::pb::v1 as pb;
use maud::{DOCTYPE, Markup, html};

use super::{
    ConsoleError, Fields, LIST_LIMIT, Signed, chart, csrf_input, enc, fmt, head_tags,
    idempotency_input, page, time,
};
use crate::App;
use crate::error::ApiError;
use crate::operator::Action;
use crate::reports::format_day;

/// How far back the machine page's telemetry chart looks.
const TELEMETRY_WINDOW_SECS: u64 = 7 * 86_400;
/// The most heartbeats the chart draws.
const TELEMETRY_POINTS: usize = 500;
/// The sales page's default period, in days, ending today.
const SALES_DEFAULT_DAYS: u64 = 14;

type Page = Result<Response, ConsoleError>;

fn query(raw: Option<&str>) -> Fields {
    Fields::parse(raw.unwrap_or_default().as_bytes())
}

fn money(app: &App, minor: i64) -> String {
    fmt::money(minor, app.config().currency.as_str())
}

/// What the fleet shows as a machine's state: its service state when not in service, else
/// IDLE / BUSY / OFFLINE / FAULT.
fn shown_state(d: &pb::Device) -> &'static str {
    match pb::ServiceState::try_from(d.service_state) {
        Ok(pb::ServiceState::OutOfService) => "OUT OF SERVICE",
        Ok(pb::ServiceState::Decommissioned) => "DECOMMISSIONED",
        _ => match pb::DeviceState::try_from(d.state) {
            Ok(pb::DeviceState::Idle) => "IDLE",
            Ok(pb::DeviceState::Busy) => "BUSY",
            Ok(pb::DeviceState::Fault) => "FAULT",
            _ => "OFFLINE",
        },
    }
}

fn state_class(state: &str) -> &'static str {
    match state {
        "OFFLINE" => "state-offline",
        "FAULT" => "state-fault",
        "BUSY" => "state-busy",
        "IDLE" => "state-idle",
        _ => "state-out",
    }
}

fn session_status(s: i32) -> &'static str {
    match pb::SessionStatus::try_from(s) {
        Ok(pb::SessionStatus::Authorized) => "AUTHORIZED",
        Ok(pb::SessionStatus::Active) => "ACTIVE",
        Ok(pb::SessionStatus::Settled) => "SETTLED",
        Ok(pb::SessionStatus::Expired) => "EXPIRED",
        _ => "UNKNOWN",
    }
}

// ---------------------------------------------------------------------------------------------
// Sign-in
// ---------------------------------------------------------------------------------------------

pub async fn sign_in_page() -> Response {
    sign_in_form(None).into_response()
}

/// The sign-in page, with `error` when a token was refused.
pub fn sign_in_form(error: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head { (head_tags("Sign in")) }
            body {
                main class="narrow" {
                    h1 { "blepay operator console" }
                    @if let Some(e) = error { p id="error" class="error" { (e) } }
                    form id="sign-in" method="post" action="/ops/sign-in" {
                        label for="token" { "Operator token" }
                        input id="token" name="token" type="password" autocomplete="current-password" required;
                        button id="sign-in-button" type="submit" { "Sign in" }
                    }
                    p class="muted" {
                        "The bootstrap token (BLEPAY_OPS_TOKEN) or one an owner created with POST /v1/ops/operators. "
                        "The session lasts 8 hours."
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fleet
// ---------------------------------------------------------------------------------------------

pub async fn fleet(State(app): State<App>, signed: Signed, RawQuery(raw): RawQuery) -> Page {
    let q = query(raw.as_deref());
    let wanted = q.get("state");
    let (state, service_state) = match wanted {
        "IDLE" => (pb::DeviceState::Idle, pb::ServiceState::InService),
        "BUSY" => (pb::DeviceState::Busy, pb::ServiceState::InService),
        "OFFLINE" => (pb::DeviceState::Offline, pb::ServiceState::InService),
        "FAULT" => (pb::DeviceState::Fault, pb::ServiceState::InService),
        "OUT_OF_SERVICE" => (pb::DeviceState::Unspecified, pb::ServiceState::OutOfService),
        _ => (pb::DeviceState::Unspecified, pb::ServiceState::Unspecified),
    };
    let list = app
        .list_devices(
            &signed.op,
            pb::ListDevicesRequest {
                state: state.into(),
                service_state: service_state.into(),
                q: q.get("q").to_owned(),
                limit: LIST_LIMIT,
                cursor: q.get("cursor").to_owned(),
            },
        )
        .await?;
    // Today's sessions and sales per machine, for roles that may read reports.
    let today = format_day(app.now() / 86_400);
    let mut sales: BTreeMap<String, (u64, i64)> = BTreeMap::new();
    if signed.may(&Action::ReadReports) {
        let report = app
            .sales_report(
                &signed.op,
                pb::SalesReportRequest {
                    from: today.clone(),
                    to: today,
                },
            )
            .await?;
        for r in report.rows {
            let e = sales.entry(r.device_id).or_default();
            e.0 += r.sessions;
            e.1 = e.1.saturating_add(r.net);
        }
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for d in &list.devices {
        *counts.entry(shown_state(d)).or_default() += 1;
    }
    let attention =
        counts.get("OFFLINE").copied().unwrap_or(0) + counts.get("FAULT").copied().unwrap_or(0);
    let content = html! {
        h1 { "Fleet" }
        p id="fleet-summary" class=(if attention > 0 { "summary attention" } else { "summary" }) {
            (list.devices.len()) " machines"
            @for (state, n) in &counts { " · " span class=(state_class(state)) { (n) " " (state) } }
        }
        form id="fleet-filter" method="get" action="/ops/fleet" class="filters" {
            input name="q" type="search" placeholder="Name starts with…" value=(q.get("q"));
            select name="state" {
                @for (v, label) in [("", "Any state"), ("IDLE", "Idle"), ("BUSY", "Busy"), ("OFFLINE", "Offline"), ("FAULT", "Fault"), ("OUT_OF_SERVICE", "Out of service")] {
                    option value=(v) selected[wanted == v] { (label) }
                }
            }
            button type="submit" { "Filter" }
        }
        div id="fleet-live" data-refresh="10" {
            table id="fleet" class="list" {
                thead { tr { th { "Machine" } th { "State" } th { "Last seen" } th { "Signal" } th { "Firmware" } th class="num" { "Today" } th class="num" { "Sales today" } } }
                tbody {
                    @for d in &list.devices {
                        @let state = shown_state(d);
                        @let today = sales.get(&d.device_id);
                        tr data-device-id=(d.device_id) class=(state_class(state)) {
                            td class="name" data-label="Machine" {
                                a href={"/ops/machines/" (d.device_id)} { (if d.name.is_empty() { d.device_id.as_str() } else { d.name.as_str() }) }
                                br; small class="muted mono" { (d.device_id) }
                            }
                            td class="state" data-label="State" { (state) }
                            td data-label="Last seen" { (time(d.last_seen_at)) }
                            td data-label="Signal" { (d.telemetry.as_ref().map_or_else(|| "—".to_owned(), |t| fmt::signal(t.signal_quality))) }
                            td data-label="Firmware" { (d.telemetry.as_ref().map_or("—", |t| t.firmware_version.as_str())) }
                            td class="num" data-label="Sessions today" { (today.map_or_else(|| "—".to_owned(), |t| t.0.to_string())) }
                            td class="num" data-label="Sales today" { (today.map_or_else(|| "—".to_owned(), |t| money(&app, t.1))) }
                        }
                    }
                }
            }
            @if list.devices.is_empty() { p class="muted" { "No machine matches." } }
        }
        @if !list.next_cursor.is_empty() {
            p { a id="next" href={"/ops/fleet?state=" (wanted) "&q=" (q.get("q")) "&cursor=" (enc(&list.next_cursor))} { "Next page" } }
        }
    };
    Ok(page(
        &signed,
        "Fleet",
        "/ops/fleet",
        q.get("done").into(),
        &content,
    ))
}

// ---------------------------------------------------------------------------------------------
// Machine
// ---------------------------------------------------------------------------------------------

pub async fn machine(
    State(app): State<App>,
    signed: Signed,
    Path(device_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Page {
    let q = query(raw.as_deref());
    let d = app.ops_device(&signed.op, &device_id).await?;
    let id =
        DeviceId::parse(&d.device_id).map_err(|e| ApiError::invalid(format!("deviceId: {e}")))?;
    let now = app.now();
    let window_start = now.saturating_sub(TELEMETRY_WINDOW_SECS);
    let history = app
        .store()
        .telemetry_history(id, window_start, now.saturating_add(1), TELEMETRY_POINTS)
        .await
        .map_err(ApiError::from)?;
    // The chart spans the last 7 days, or the machine's life when it is younger.
    let from = history.first().map_or(window_start, |first| {
        first.at.saturating_sub(60).max(window_start)
    });
    let signal_points: Vec<(u64, i64, String)> = history
        .iter()
        .filter(|s| s.telemetry.signal_quality <= 31)
        .map(|s| {
            let csq = s.telemetry.signal_quality;
            (s.at, i64::from(csq), fmt::signal(u32::from(csq)))
        })
        .collect();
    let sessions = if signed.may(&Action::ReadMoney) {
        Some(
            app.list_sessions(
                &signed.op,
                pb::ListSessionsRequest {
                    device_id: d.device_id.clone(),
                    limit: 20,
                    ..Default::default()
                },
            )
            .await?,
        )
    } else {
        None
    };
    let state = shown_state(&d);
    let path = format!("/ops/machines/{}", d.device_id);
    let price_major = fmt::money(d.price_per_unit, &d.currency);
    let price_input = price_major.split(' ').next().unwrap_or_default().to_owned();
    let content = html! {
        h1 { (d.name) }
        p { span class={"badge " (state_class(state))} id="machine-state" { (state) } " " span class="mono muted" { (d.device_id) } }
        dl class="facts" {
            dt { "Tariff" } dd id="tariff-now" { (price_major) " per " (d.unit_name) }
            dt { "Last seen" } dd { (time(d.last_seen_at)) }
            dt { "Key" } dd {
                "version " (d.key_version) ", epoch " (d.key_epoch)
                @if d.pending_key_epoch != 0 { " (rotation to epoch " (d.pending_key_epoch) " pending)" }
                @if d.revoked_at != 0 { " — " strong { "revoked" } " " (time(d.revoked_at)) ": " (d.revoked_reason) }
            }
            @if let Some(t) = &d.telemetry {
                dt { "Firmware" } dd { (t.firmware_version) }
                dt { "Signal" } dd { (fmt::signal(t.signal_quality)) }
                dt { "Uptime" } dd { (t.uptime_secs / 3600) " h, " (t.boot_count) " boots" }
                dt { "Outbox" } dd { (t.outbox_depth) " waiting" }
                dt { "Lifetime" } dd { (t.lifetime_units) " " (d.unit_name) }
                @if !t.fault_codes.is_empty() { dt { "Faults" } dd class="state-fault" { @for c in &t.fault_codes { (c) " " } } }
            }
        }
        h2 { "Signal per heartbeat (up to 7 days)" }
        (chart::line("telemetry-chart", "Signal quality (CSQ, 0–31) per heartbeat", &signal_points, (from, now), (0, 31)))
        @if signed.may(&Action::ManageDevice) {
            h2 { "Tariff and name" }
            form id="tariff" method="post" action=(path) class="inline" {
                (csrf_input(&signed))
                label { "Name " input name="name" value=(d.name) maxlength="64"; }
                label { "Price (" (d.currency) ") " input name="price" value=(price_input) inputmode="decimal" size="8"; }
                label { "per " input name="unit_name" value=(d.unit_name) size="8"; }
                button type="submit" { "Save" }
            }
            h2 { "Service" }
            form id="service" method="post" action=(path) class="inline" {
                (csrf_input(&signed))
                @if state == "OUT OF SERVICE" {
                    input type="hidden" name="service_state" value="IN_SERVICE";
                    button type="submit" { "Back in service" }
                } @else if state != "DECOMMISSIONED" {
                    input type="hidden" name="service_state" value="OUT_OF_SERVICE";
                    button type="submit" data-confirm="Take this machine out of service? Payments on it are refused until it is back." { "Take out of service" }
                }
            }
        }
        (key_forms(&signed, &d, &path))
        @if let Some(list) = &sessions {
            h2 { "Recent sessions" }
            (session_table("machine-sessions", &app, &BTreeMap::from([(d.device_id.clone(), d.name.clone())]), &list.sessions))
            p { a href={"/ops/sessions?device=" (enc(&d.device_id))} { "All sessions of this machine" } }
        }
    };
    Ok(page(
        &signed,
        &d.name,
        "/ops/fleet",
        q.get("done").into(),
        &content,
    ))
}

/// The machine page's key actions, for roles that may: rotate, and revoke while not revoked.
fn key_forms(signed: &Signed, d: &pb::Device, path: &str) -> Markup {
    html! {
        @if signed.may(&Action::DeviceKeys) {
            h2 { "Key" }
            form id="rotate-key" method="post" action={(path) "/rotate-key"} class="inline" data-confirm="Rotate this machine's key? It picks up the new key on its next request." {
                (csrf_input(signed)) (idempotency_input())
                button type="submit" { "Rotate key" }
            }
            @if d.revoked_at == 0 {
                form id="revoke" method="post" action={(path) "/revoke"} class="inline danger" data-confirm="Revoke this machine's key? It is refused at once and needs a new key to work again." {
                    (csrf_input(signed))
                    label { "Reason " input name="reason" required maxlength="200" placeholder="stolen, replaced…"; }
                    button type="submit" class="danger" { "Revoke key" }
                }
            }
        }
    }
}

fn session_table(
    id: &str,
    app: &App,
    names: &BTreeMap<String, String>,
    sessions: &[pb::Session],
) -> Markup {
    html! {
        table id=(id) class="list" {
            thead { tr { th { "Session" } th { "Status" } th { "Machine" } th { "User" } th { "Created" } th class="num" { "Units" } th class="num" { "Amount" } th class="num" { "Refunded" } } }
            tbody {
                @for s in sessions {
                    tr data-session-id=(s.session_id) {
                        td data-label="Session" { a class="mono" href={"/ops/sessions/" (s.session_id)} { (s.session_id.get(..8).unwrap_or(&s.session_id)) "…" } }
                        td data-label="Status" { (session_status(s.status)) }
                        td data-label="Machine" { a href={"/ops/machines/" (s.device_id)} { (names.get(&s.device_id).map_or(s.device_id.as_str(), String::as_str)) } }
                        td data-label="User" { a href={"/ops/wallets?user=" (enc(&s.user_id))} { (s.user_id) } }
                        td data-label="Created" { (time(s.created_at)) }
                        td class="num" data-label="Units" { (s.units) " " (s.unit_name) }
                        td class="num" data-label="Amount" { (money(app, s.amount)) }
                        td class="num" data-label="Refunded" { @if s.refunded > 0 { (money(app, s.refunded)) } @else { "—" } }
                    }
                }
            }
        }
        @if sessions.is_empty() { p class="muted" { "No session." } }
    }
}

// ---------------------------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------------------------

/// A day `YYYY-MM-DD` as unix seconds at its start (or the end of it, `end`); empty = 0.
fn day_bound(s: &str, end: bool) -> Result<i64, ApiError> {
    if s.is_empty() {
        return Ok(0);
    }
    let day = crate::reports::parse_day(s).map_err(|e| ApiError::invalid(format!("{s}: {e}")))?;
    let start = day.saturating_mul(86_400);
    let secs = if end { start + 86_399 } else { start };
    Ok(i64::try_from(secs).unwrap_or(i64::MAX))
}

pub async fn sessions(State(app): State<App>, signed: Signed, RawQuery(raw): RawQuery) -> Page {
    let q = query(raw.as_deref());
    let status = match q.get("status") {
        "AUTHORIZED" => pb::SessionStatus::Authorized,
        "ACTIVE" => pb::SessionStatus::Active,
        "SETTLED" => pb::SessionStatus::Settled,
        "EXPIRED" => pb::SessionStatus::Expired,
        _ => pb::SessionStatus::Unspecified,
    };
    let list = app
        .list_sessions(
            &signed.op,
            pb::ListSessionsRequest {
                device_id: q.get("device").to_owned(),
                user_id: q.get("user").to_owned(),
                status: status.into(),
                from: day_bound(q.get("from"), false)?,
                to: day_bound(q.get("to"), true)?,
                limit: LIST_LIMIT,
                cursor: q.get("cursor").to_owned(),
            },
        )
        .await?;
    let names = device_names(&app, &signed).await?;
    let content = html! {
        h1 { "Sessions" }
        form id="session-filter" method="get" action="/ops/sessions" class="filters" {
            input name="device" placeholder="Machine id" value=(q.get("device")) size="16";
            input name="user" placeholder="User id" value=(q.get("user"));
            select name="status" {
                @for v in ["", "AUTHORIZED", "ACTIVE", "SETTLED", "EXPIRED"] {
                    option value=(v) selected[q.get("status") == v] { (if v.is_empty() { "Any status" } else { v }) }
                }
            }
            label { "From " input name="from" type="date" value=(q.get("from")); }
            label { "To " input name="to" type="date" value=(q.get("to")); }
            button type="submit" { "Filter" }
        }
        (session_table("sessions", &app, &names, &list.sessions))
        @if !list.next_cursor.is_empty() {
            p { a id="next" href={"/ops/sessions?device=" (q.get("device")) "&user=" (q.get("user")) "&status=" (q.get("status")) "&from=" (q.get("from")) "&to=" (q.get("to")) "&cursor=" (enc(&list.next_cursor))} { "Older" } }
        }
    };
    Ok(page(
        &signed,
        "Sessions",
        "/ops/sessions",
        q.get("done").into(),
        &content,
    ))
}

pub async fn session(
    State(app): State<App>,
    signed: Signed,
    Path(session_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Page {
    let q = query(raw.as_deref());
    let s = app.ops_session(&signed.op, &session_id).await?;
    let machine = app.ops_device(&signed.op, &s.device_id).await?;
    // The ledger entries of this session: the user's statement, newest first, filtered.
    let statement = app
        .user_ledger(
            &signed.op,
            pb::OpsLedgerRequest {
                user_id: s.user_id.clone(),
                limit: 500,
                cursor: String::new(),
            },
        )
        .await?;
    let status = session_status(s.status);
    let open = matches!(status, "AUTHORIZED" | "ACTIVE");
    let refundable = s.amount.saturating_sub(s.refunded);
    let path = format!("/ops/sessions/{}", s.session_id);
    let closed_by = match pb::CloseReason::try_from(s.closed_by) {
        Ok(pb::CloseReason::Timeout) => "by timeout (the machine went silent)",
        Ok(pb::CloseReason::Report) => "by the machine's final report",
        Ok(pb::CloseReason::Operator) => "by an operator, by hand",
        _ => "",
    };
    let story = session_story(&app, &s, &statement.entries, status, closed_by);
    let content = html! {
        h1 { "Session " span class="mono" { (s.session_id) } }
        dl class="facts" {
            dt { "Status" } dd id="session-status" { (status) }
            dt { "Machine" } dd { a href={"/ops/machines/" (s.device_id)} { (machine.name) } " " span class="mono muted" { (s.device_id) } }
            dt { "User" } dd { a href={"/ops/wallets?user=" (enc(&s.user_id))} { (s.user_id) } }
            dt { "Tariff" } dd { (money(&app, s.price_per_unit)) " per " (s.unit_name) }
            dt { "Held" } dd { (money(&app, s.hold_amount)) }
            dt { "Consumed" } dd { (s.units) " " (s.unit_name) ", " (money(&app, s.amount)) }
            dt { "Refunded" } dd id="session-refunded" { (money(&app, s.refunded)) }
        }
        h2 { "Story" }
        ol id="story" class="story" {
            @for (_, _, item) in &story { li { (item) } }
        }
        @if refundable > 0 && signed.may(&Action::Refund { amount: blepay_core::Amount::ZERO }) {
            h2 { "Refund" }
            form id="refund" method="post" action={(path) "/refund"} class="inline" data-confirm="Refund this amount to the user's wallet?" {
                (csrf_input(&signed)) (idempotency_input())
                label { "Amount (" (app.config().currency.as_str()) ") " input name="amount" inputmode="decimal" size="8" required value=(fmt::money(refundable, app.config().currency.as_str()).split(' ').next().unwrap_or_default()); }
                label { "Reason " input name="reason" required maxlength="200" placeholder="machine did not dispense"; }
                button type="submit" { "Refund" }
            }
            p class="muted" { "At most " (money(&app, refundable)) " is left to refund." }
        }
        @if open && signed.may(&Action::CloseSession) {
            h2 { "Close" }
            form id="close" method="post" action={(path) "/close"} class="inline" data-confirm="Close this session by hand? An unstarted one releases its hold; a started one settles on what the machine reported." {
                (csrf_input(&signed))
                label { "Reason " input name="reason" required maxlength="200"; }
                button type="submit" class="danger" { "Close session" }
            }
        }
    };
    Ok(page(
        &signed,
        "Session",
        "/ops/sessions",
        q.get("done").into(),
        &content,
    ))
}

/// A session's story, oldest first: what the session record says (authorized, started, last
/// report, ended) and its ledger entries (hold, capture, release, refunds with who made them),
/// in the order they happen within one second.
fn session_story(
    app: &App,
    s: &pb::Session,
    entries: &[pb::StatementEntry],
    status: &str,
    closed_by: &str,
) -> Vec<(i64, u8, Markup)> {
    let mut story = vec![(
        s.created_at,
        0,
        html! { (time(s.created_at)) " — authorized: " (money(app, s.hold_amount)) " to hold (start by " (time(s.expires_at)) ")" },
    )];
    if s.started_at != 0 {
        story.push((
            s.started_at,
            2,
            html! { (time(s.started_at)) " — the machine started" },
        ));
    }
    if s.last_report_at != 0 {
        story.push((
            s.last_report_at,
            3,
            html! { (time(s.last_report_at)) " — last report from the machine: " (s.units) " " (s.unit_name) },
        ));
    }
    for e in entries.iter().filter(|e| e.session_id == s.session_id) {
        let rank = match e.kind.as_str() {
            "HOLD" => 1,
            "REFUND" => 6,
            _ => 4,
        };
        story.push((
            e.at,
            rank,
            html! {
                (time(e.at)) " — " (e.kind) ": " (money(app, e.amount))
                @if !e.actor.is_empty() { " by " (e.actor) }
            },
        ));
    }
    if s.ended_at != 0 {
        let by_hand = closed_by.starts_with("by an operator");
        let what = match (status, by_hand) {
            ("EXPIRED", true) => "voided: the hold released",
            ("EXPIRED", false) => "expired: not started in time, hold released",
            _ => "settled",
        };
        story.push((
            s.ended_at,
            5,
            html! { (time(s.ended_at)) " — " (what) " " (closed_by) },
        ));
    }
    if let Some(late) = &s.late_report {
        story.push((
            late.at,
            7,
            html! { (time(late.at)) " — a final report arrived after the timeout: " (late.units) " " (s.unit_name) ", " (money(app, late.charged)) " charged on top" },
        ));
    }
    story.sort_by_key(|(at, rank, _)| (*at, *rank));
    story
}

// ---------------------------------------------------------------------------------------------
// Problems
// ---------------------------------------------------------------------------------------------

pub async fn problems(State(app): State<App>, signed: Signed, RawQuery(raw): RawQuery) -> Page {
    let q = query(raw.as_deref());
    let list = app
        .list_problems(
            &signed.op,
            pb::ListProblemsRequest {
                limit: LIST_LIMIT,
                cursor: q.get("cursor").to_owned(),
            },
        )
        .await?;
    let may_dismiss = signed.may(&Action::ResolveProblem);
    let content = html! {
        h1 { "Problems" }
        p class="muted" { "Users' reports that they paid and got nothing, oldest first. Resolve one by refunding its session (the refund closes the report) or dismiss it." }
        table id="problems" class="list" {
            thead { tr { th { "Reported" } th { "User" } th { "Reason" } th { "Session" } th { "Action" } } }
            tbody {
                @for p in &list.problems {
                    tr data-problem-id=(p.problem_id) {
                        td data-label="Reported" { (time(p.created_at)) }
                        td data-label="User" { a href={"/ops/wallets?user=" (enc(&p.user_id))} { (p.user_id) } }
                        td data-label="Reason" { (p.reason) }
                        td data-label="Session" { a class="mono session-link" href={"/ops/sessions/" (p.session_id)} { "Open session to refund" } }
                        td data-label="Action" {
                            @if may_dismiss {
                                form class="dismiss inline" method="post" action={"/ops/problems/" (p.problem_id) "/dismiss"} {
                                    (csrf_input(&signed))
                                    input name="reason" required maxlength="200" placeholder="why dismissed";
                                    button type="submit" { "Dismiss" }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if list.problems.is_empty() { p class="muted" { "No open problem." } }
        @if !list.next_cursor.is_empty() { p { a id="next" href={"/ops/problems?cursor=" (enc(&list.next_cursor))} { "More" } } }
    };
    Ok(page(
        &signed,
        "Problems",
        "/ops/problems",
        q.get("done").into(),
        &content,
    ))
}

// ---------------------------------------------------------------------------------------------
// Wallets
// ---------------------------------------------------------------------------------------------

pub async fn wallets(State(app): State<App>, signed: Signed, RawQuery(raw): RawQuery) -> Page {
    let q = query(raw.as_deref());
    let user = q.get("user");
    let found = if user.is_empty() {
        None
    } else {
        app.authorize(&signed.op, &Action::ReadMoney)?;
        let uid = App::parse_user(user)?;
        let wallet = app.wallet(&uid).await?;
        let statement = app
            .user_ledger(
                &signed.op,
                pb::OpsLedgerRequest {
                    user_id: user.to_owned(),
                    limit: LIST_LIMIT,
                    cursor: q.get("cursor").to_owned(),
                },
            )
            .await?;
        Some((wallet, statement))
    };
    let content = html! {
        h1 { "Wallets" }
        form id="wallet-lookup" method="get" action="/ops/wallets" class="filters" {
            input name="user" placeholder="User id" value=(user) required;
            button type="submit" { "Look up" }
        }
        @if let Some((w, st)) = &found {
            h2 { "Wallet of " (w.user_id) }
            dl class="facts" {
                dt { "Available" } dd { span id="balance" { (money(&app, w.available)) } }
                dt { "Held" } dd { (money(&app, w.held)) }
                dt { "Spent" } dd { (money(&app, w.spent)) }
                dt { "Refunded" } dd { (money(&app, w.refunded)) }
                dt { "Daily limit" } dd { @if w.daily_limit > 0 { (money(&app, w.daily_limit)) " (" (money(&app, w.spent_today)) " today)" } @else { "none" } }
            }
            @if signed.may(&Action::TopUp) {
                form id="topup" method="post" action={"/ops/wallets/" (enc(&w.user_id)) "/topup"} class="inline" data-confirm="Top up this wallet? The money is credited at once." {
                    (csrf_input(&signed)) (idempotency_input())
                    label { "Top up (" (app.config().currency.as_str()) ") " input name="amount" inputmode="decimal" size="8" required; }
                    button type="submit" { "Top up" }
                }
            }
            h2 { "Statement" }
            table id="statement" class="list" {
                thead { tr { th { "When" } th { "Kind" } th class="num" { "Amount" } th class="num" { "Available" } th { "Session" } th { "By" } } }
                tbody {
                    @for e in &st.entries {
                        tr {
                            td data-label="When" { (time(e.at)) }
                            td data-label="Kind" { (e.kind) }
                            td class="num" data-label="Amount" { (money(&app, e.amount)) }
                            td class="num" data-label="Available" { (money(&app, e.available_delta)) }
                            td data-label="Session" { @if !e.session_id.is_empty() { a class="mono" href={"/ops/sessions/" (e.session_id)} { (e.session_id.get(..8).unwrap_or(&e.session_id)) "…" } } }
                            td data-label="By" { (e.actor) }
                        }
                    }
                }
            }
            @if !st.next_cursor.is_empty() { p { a id="next" href={"/ops/wallets?user=" (enc(&w.user_id)) "&cursor=" (enc(&st.next_cursor))} { "Older" } } }
        }
    };
    Ok(page(
        &signed,
        "Wallets",
        "/ops/wallets",
        q.get("done").into(),
        &content,
    ))
}

// ---------------------------------------------------------------------------------------------
// Sales
// ---------------------------------------------------------------------------------------------

fn sales_period(app: &App, q: &Fields) -> (String, String) {
    let today = app.now() / 86_400;
    let from = match q.get("from") {
        "" => format_day(today.saturating_sub(SALES_DEFAULT_DAYS - 1)),
        s => s.to_owned(),
    };
    let to = match q.get("to") {
        "" => format_day(today),
        s => s.to_owned(),
    };
    (from, to)
}

pub async fn sales(State(app): State<App>, signed: Signed, RawQuery(raw): RawQuery) -> Page {
    let q = query(raw.as_deref());
    let (from, to) = sales_period(&app, &q);
    let report = app
        .sales_report(
            &signed.op,
            pb::SalesReportRequest {
                from: from.clone(),
                to: to.clone(),
            },
        )
        .await?;
    let (first, last) = crate::reports::report_range(&from, &to)?;
    let mut per_day: BTreeMap<String, i64> = BTreeMap::new();
    let mut day = first;
    while day <= last {
        per_day.insert(format_day(day), 0);
        day += 1;
    }
    let mut per_machine: BTreeMap<String, (u64, u64, i64, i64, i64)> = BTreeMap::new();
    for r in &report.rows {
        let d = per_day.entry(r.day.clone()).or_default();
        *d = d.saturating_add(r.net);
        let m = per_machine.entry(r.device_id.clone()).or_default();
        m.0 += r.sessions;
        m.1 += r.units;
        m.2 = m.2.saturating_add(r.captured);
        m.3 = m.3.saturating_add(r.refunded);
        m.4 = m.4.saturating_add(r.net);
    }
    let names = device_names(&app, &signed).await?;
    let labels: Vec<String> = per_day
        .keys()
        .map(|d| d.get(5..).unwrap_or(d).to_owned())
        .collect();
    let values: Vec<i64> = per_day.values().copied().collect();
    let shown: Vec<String> = values.iter().map(|v| money(&app, *v)).collect();
    let totals = report.totals.unwrap_or_default();
    let csv = format!("/ops/sales.csv?from={}&to={}", enc(&from), enc(&to));
    let content = html! {
        h1 { "Sales" }
        form id="sales-period" method="get" action="/ops/sales" class="filters" {
            label { "From " input name="from" type="date" value=(from); }
            label { "To " input name="to" type="date" value=(to); }
            button type="submit" { "Show" }
            a id="sales-csv" class="button" href=(csv) { "Download CSV" }
        }
        p id="sales-total" class="summary" {
            (totals.sessions) " sessions · " (money(&app, totals.captured)) " captured · "
            (money(&app, totals.refunded)) " refunded · " strong { (money(&app, totals.net)) " net" }
        }
        (chart::bars("sales-chart", "Net sales per day (UTC)", &labels, &values, &shown))
        table id="sales-by-machine" class="list" {
            thead { tr { th { "Machine" } th class="num" { "Sessions" } th class="num" { "Units" } th class="num" { "Captured" } th class="num" { "Refunded" } th class="num" { "Net" } } }
            tbody {
                @for (device, m) in &per_machine {
                    tr {
                        td data-label="Machine" { a href={"/ops/machines/" (device)} { (names.get(device).map_or(device.as_str(), String::as_str)) } }
                        td class="num" data-label="Sessions" { (m.0) }
                        td class="num" data-label="Units" { (m.1) }
                        td class="num" data-label="Captured" { (money(&app, m.2)) }
                        td class="num" data-label="Refunded" { (money(&app, m.3)) }
                        td class="num" data-label="Net" { (money(&app, m.4)) }
                    }
                }
            }
        }
        @if per_machine.is_empty() { p class="muted" { "No sale in this period." } }
    };
    Ok(page(&signed, "Sales", "/ops/sales", None, &content))
}

/// Every machine's name by id (the first 500, the list's largest page), for tables that show
/// machines by name.
async fn device_names(app: &App, signed: &Signed) -> Result<BTreeMap<String, String>, ApiError> {
    let list = app
        .list_devices(
            &signed.op,
            pb::ListDevicesRequest {
                limit: 500,
                ..Default::default()
            },
        )
        .await?;
    Ok(list
        .devices
        .into_iter()
        .filter(|d| !d.name.is_empty())
        .map(|d| (d.device_id, d.name))
        .collect())
}

/// The sales report of the period as CSV (the same rows as `GET /v1/ops/reports/sales`).
pub async fn sales_csv(State(app): State<App>, signed: Signed, RawQuery(raw): RawQuery) -> Page {
    let q = query(raw.as_deref());
    let (from, to) = sales_period(&app, &q);
    let report = app
        .sales_report(
            &signed.op,
            pb::SalesReportRequest {
                from: from.clone(),
                to: to.clone(),
            },
        )
        .await?;
    let body = crate::reports::sales_csv(&report)?;
    let disposition = format!("attachment; filename=\"blepay-sales-{from}-{to}.csv\"");
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response())
}

// ---------------------------------------------------------------------------------------------
// Audit
// ---------------------------------------------------------------------------------------------

pub async fn audit(State(app): State<App>, signed: Signed, RawQuery(raw): RawQuery) -> Page {
    let q = query(raw.as_deref());
    let list = app
        .list_audit(
            &signed.op,
            pb::ListAuditRequest {
                limit: LIST_LIMIT,
                cursor: q.get("cursor").to_owned(),
                principal: q.get("principal").to_owned(),
                action: q.get("action").to_owned(),
            },
        )
        .await?;
    let content = html! {
        h1 { "Audit trail" }
        form id="audit-filter" method="get" action="/ops/audit" class="filters" {
            input name="principal" placeholder="Who (op:…, ops-token)" value=(q.get("principal"));
            input name="action" placeholder="Action (session.refund…)" value=(q.get("action"));
            button type="submit" { "Filter" }
        }
        table id="audit" class="list" {
            thead { tr { th { "When" } th { "Who" } th { "Role" } th { "Action" } th { "Target" } th class="num" { "Amount" } } }
            tbody {
                @for e in &list.events {
                    tr {
                        td data-label="When" { (time(e.at)) }
                        td data-label="Who" { (e.principal) }
                        td data-label="Role" { (e.role) }
                        td data-label="Action" { (e.action) }
                        td data-label="Target" class="mono" { (e.target) }
                        td class="num" data-label="Amount" { @if e.amount != 0 { (money(&app, e.amount)) } }
                    }
                }
            }
        }
        @if list.events.is_empty() { p class="muted" { "Nothing recorded." } }
        @if !list.next_cursor.is_empty() {
            p { a id="next" href={"/ops/audit?principal=" (q.get("principal")) "&action=" (q.get("action")) "&cursor=" (enc(&list.next_cursor))} { "Older" } }
        }
    };
    Ok(page(&signed, "Audit", "/ops/audit", None, &content))
}
