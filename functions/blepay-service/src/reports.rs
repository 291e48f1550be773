//! Lists, statements and the sales report (issue 11, item 7; docs/api.md "Lists, statements and
//! reports"): the handlers over `pb` messages (shared by HTTP and gRPC), the decoders of their
//! query strings and dates, the HTTP routes, and their CSV form (`Accept: text/csv`).

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use blepay_core::{DeviceId, SessionStatus, UserId};
use blepay_proto::pb::v1 as pb;
use blepay_store::decide::{DAY_SECS, SalesRow, sales_report, sales_totals};
use blepay_store::{Page, PageRequest, SessionFilter, StatementEntry};

use crate::app::{App, session_pb};
use crate::error::{ApiError, ErrorCode};
use crate::http::{OpsCaller, PROTOBUF, PhoneUser, Reply};
use crate::operator::{Action, Operator};
use crate::page::{encode_cursor, page_request};

/// The longest sales report, in UTC days.
pub const MAX_REPORT_DAYS: u64 = 366;

/// The CSV media type (RFC 4180).
pub const CSV: &str = "text/csv";

// ---------------------------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------------------------

impl App {
    /// Sessions by machine, user, status and creation time, newest first.
    ///
    /// # Errors
    /// FORBIDDEN, INVALID_ARGUMENT (a filter, `limit`, `cursor`), RETRY_LATER.
    pub async fn list_sessions(
        &self,
        op: &Operator,
        req: pb::ListSessionsRequest,
    ) -> Result<pb::SessionList, ApiError> {
        self.authorize(op, &Action::ReadMoney)?;
        let filter = session_filter(&req)?;
        let page = page_of(req.limit, &req.cursor)?;
        self.sessions_page(&filter, &page).await
    }

    /// The caller's own sessions, newest first.
    ///
    /// # Errors
    /// INVALID_ARGUMENT (`limit`, `cursor`), RETRY_LATER.
    pub async fn my_sessions(
        &self,
        user: &UserId,
        req: pb::ListMySessionsRequest,
    ) -> Result<pb::SessionList, ApiError> {
        let filter = SessionFilter {
            user: Some(user.clone()),
            ..SessionFilter::default()
        };
        let page = page_of(req.limit, &req.cursor)?;
        self.sessions_page(&filter, &page).await
    }

    async fn sessions_page(
        &self,
        filter: &SessionFilter,
        page: &PageRequest,
    ) -> Result<pb::SessionList, ApiError> {
        let Page { items, next } = self.store().list_sessions(filter, page, self.now()).await?;
        Ok(pb::SessionList {
            sessions: items.iter().map(session_pb).collect(),
            next_cursor: next.as_ref().map(encode_cursor).unwrap_or_default(),
        })
    }

    /// A user's statement, for operators.
    ///
    /// # Errors
    /// FORBIDDEN, INVALID_ARGUMENT, RETRY_LATER.
    pub async fn user_ledger(
        &self,
        op: &Operator,
        req: pb::OpsLedgerRequest,
    ) -> Result<pb::Statement, ApiError> {
        self.authorize(op, &Action::ReadMoney)?;
        let user = Self::parse_user(&req.user_id)?;
        self.statement(&user, req.limit, &req.cursor).await
    }

    /// The caller's own statement.
    ///
    /// # Errors
    /// INVALID_ARGUMENT, RETRY_LATER.
    pub async fn my_ledger(
        &self,
        user: &UserId,
        req: pb::LedgerRequest,
    ) -> Result<pb::Statement, ApiError> {
        self.statement(user, req.limit, &req.cursor).await
    }

    async fn statement(
        &self,
        user: &UserId,
        limit: u32,
        cursor: &str,
    ) -> Result<pb::Statement, ApiError> {
        let page = page_of(limit, cursor)?;
        let Page { items, next } = self.store().statement(user, &page).await?;
        let currency = self.config().currency.to_string();
        Ok(pb::Statement {
            user_id: user.to_string(),
            entries: items
                .iter()
                .map(|e| statement_entry_pb(e, user, &currency))
                .collect(),
            next_cursor: next.as_ref().map(encode_cursor).unwrap_or_default(),
        })
    }

    /// Sales per machine per UTC day over `from..=to` (YYYY-MM-DD, at most
    /// [`MAX_REPORT_DAYS`]).
    ///
    /// # Errors
    /// FORBIDDEN, INVALID_ARGUMENT (a date, the range), RETRY_LATER.
    pub async fn sales_report(
        &self,
        op: &Operator,
        req: pb::SalesReportRequest,
    ) -> Result<pb::SalesReport, ApiError> {
        self.authorize(op, &Action::ReadReports)?;
        let (from, to) = report_range(&req.from, &req.to)?;
        let start = from.saturating_mul(DAY_SECS);
        let end = to.saturating_add(1).saturating_mul(DAY_SECS);
        let facts = self.store().sales_facts(start, end).await?;
        let rows = sales_report(&facts, from, to)?;
        let totals = sales_totals(&rows)?;
        let currency = self.config().currency.to_string();
        Ok(pb::SalesReport {
            from: format_day(from),
            to: format_day(to),
            rows: rows.iter().map(|r| sales_row_pb(r, &currency)).collect(),
            totals: Some(sales_row_pb(&totals, &currency)),
        })
    }
}

fn page_of(limit: u32, cursor: &str) -> Result<PageRequest, ApiError> {
    page_request((limit != 0).then_some(limit), Some(cursor))
}

fn statement_entry_pb(e: &StatementEntry, user: &UserId, currency: &str) -> pb::StatementEntry {
    pb::StatementEntry {
        entry_id: e.id.clone(),
        kind: e.kind.as_str().to_owned(),
        amount: e.amount.minor(),
        available_delta: e.available_delta(user),
        debit: e.debit.clone(),
        credit: e.credit.clone(),
        session_id: e.session.map(|s| s.to_string()).unwrap_or_default(),
        at: i64::try_from(e.at).unwrap_or(i64::MAX),
        actor: e.actor.clone().unwrap_or_default(),
        currency: currency.to_owned(),
    }
}

fn sales_row_pb(r: &SalesRow, currency: &str) -> pb::SalesRow {
    pb::SalesRow {
        day: r.device.map(|_| format_day(r.day)).unwrap_or_default(),
        device_id: r.device.map(|d| d.to_string()).unwrap_or_default(),
        sessions: r.sessions,
        units: r.units,
        captured: r.captured,
        refunded: r.refunded,
        net: r.net,
        currency: currency.to_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// Decoders
// ---------------------------------------------------------------------------------------------

/// The session list's filter from its request message (empty / 0 / unspecified = no filter).
///
/// # Errors
/// INVALID_ARGUMENT naming the field.
pub fn session_filter(req: &pb::ListSessionsRequest) -> Result<SessionFilter, ApiError> {
    let device = match req.device_id.as_str() {
        "" => None,
        d => Some(DeviceId::parse(d).map_err(|e| ApiError::invalid(format!("deviceId: {e}")))?),
    };
    let user = match req.user_id.as_str() {
        "" => None,
        u => Some(App::parse_user(u)?),
    };
    let status = match pb::SessionStatus::try_from(req.status) {
        Ok(pb::SessionStatus::Unspecified) => None,
        Ok(pb::SessionStatus::Authorized) => Some(SessionStatus::Authorized),
        Ok(pb::SessionStatus::Active) => Some(SessionStatus::Active),
        Ok(pb::SessionStatus::Settled) => Some(SessionStatus::Settled),
        Ok(pb::SessionStatus::Expired) => Some(SessionStatus::Expired),
        Err(_) => return Err(ApiError::invalid("status: not a session status")),
    };
    let (from, to) = time_range(req.from, req.to)?;
    Ok(SessionFilter {
        device,
        user,
        status,
        from,
        to,
    })
}

/// A list's `from`/`to` (unix seconds, 0 = no bound), checked: not negative, `from` not after
/// `to`.
///
/// # Errors
/// INVALID_ARGUMENT naming the field.
pub fn time_range(from: i64, to: i64) -> Result<(Option<u64>, Option<u64>), ApiError> {
    let time = |name: &str, v: i64| match v {
        0 => Ok(None),
        v => u64::try_from(v)
            .map(Some)
            .map_err(|_| ApiError::invalid(format!("{name}: must be unix seconds (>= 0)"))),
    };
    let from = time("from", from)?;
    let to = time("to", to)?;
    if let (Some(f), Some(t)) = (from, to) {
        if f > t {
            return Err(ApiError::invalid("from: after to"));
        }
    }
    Ok((from, to))
}

/// The longest query string value accepted.
const MAX_PARAM_LEN: usize = 256;

/// Decode a query string into its `name=value` pairs: only `allowed` names, each at most once.
///
/// # Errors
/// INVALID_ARGUMENT naming an unknown or repeated parameter, or an over-long value.
pub fn query_pairs<'a>(
    query: Option<&str>,
    allowed: &[&'a str],
) -> Result<Vec<(&'a str, String)>, ApiError> {
    let mut out: Vec<(&'a str, String)> = Vec::new();
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let Some(name) = allowed.iter().find(|a| **a == k) else {
            let shown: String = k.chars().take(40).collect();
            return Err(ApiError::invalid(format!(
                "unknown query parameter {shown:?} (expected one of {})",
                allowed.join(", ")
            )));
        };
        if out.iter().any(|(n, _)| n == name) {
            return Err(ApiError::invalid(format!("{name}: given more than once")));
        }
        if v.len() > MAX_PARAM_LEN {
            return Err(ApiError::invalid(format!("{name}: too long")));
        }
        out.push((name, v.into_owned()));
    }
    Ok(out)
}

fn digits<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, ApiError> {
    if v.is_empty() || v.len() > 19 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::invalid(format!(
            "{name}: not a non-negative integer"
        )));
    }
    v.parse()
        .map_err(|_| ApiError::invalid(format!("{name}: out of range")))
}

pub(crate) fn limit_param(v: &str) -> Result<u32, ApiError> {
    let bad = || ApiError::invalid(format!("limit: must be 1..={}", PageRequest::MAX_LIMIT));
    let n: u32 = digits("limit", v).map_err(|_| bad())?;
    if n == 0 || n > PageRequest::MAX_LIMIT {
        return Err(bad());
    }
    Ok(n)
}

/// `GET /v1/ops/sessions`' query: `deviceId userId status from to limit cursor`.
///
/// # Errors
/// INVALID_ARGUMENT naming the parameter.
pub fn sessions_query(query: Option<&str>) -> Result<pb::ListSessionsRequest, ApiError> {
    let mut req = pb::ListSessionsRequest::default();
    let allowed = [
        "deviceId", "userId", "status", "from", "to", "limit", "cursor",
    ];
    for (name, v) in query_pairs(query, &allowed)? {
        match name {
            "deviceId" => req.device_id = v,
            "userId" => req.user_id = v,
            "status" => {
                req.status = pb::SessionStatus::from_str_name(&v)
                    .filter(|s| *s != pb::SessionStatus::Unspecified)
                    .ok_or_else(|| {
                        ApiError::invalid("status: one of AUTHORIZED, ACTIVE, SETTLED, EXPIRED")
                    })? as i32;
            }
            "from" => req.from = time_param("from", &v)?,
            "to" => req.to = time_param("to", &v)?,
            "limit" => req.limit = limit_param(&v)?,
            _ => req.cursor = v,
        }
    }
    // The message's own checks (ids, the range), as gRPC gets them.
    session_filter(&req)?;
    Ok(req)
}

pub(crate) fn time_param(name: &str, v: &str) -> Result<i64, ApiError> {
    digits::<i64>(name, v)
}

/// A page's query: `limit cursor`.
///
/// # Errors
/// INVALID_ARGUMENT naming the parameter.
pub fn page_query(query: Option<&str>) -> Result<(u32, String), ApiError> {
    let (mut limit, mut cursor) = (0, String::new());
    for (name, v) in query_pairs(query, &["limit", "cursor"])? {
        if name == "limit" {
            limit = limit_param(&v)?;
        } else {
            cursor = v;
        }
    }
    page_of(limit, &cursor)?;
    Ok((limit, cursor))
}

/// The sales report's query: `from to` (both required, YYYY-MM-DD).
///
/// # Errors
/// INVALID_ARGUMENT naming the parameter.
pub fn sales_query(query: Option<&str>) -> Result<pb::SalesReportRequest, ApiError> {
    let mut req = pb::SalesReportRequest::default();
    for (name, v) in query_pairs(query, &["from", "to"])? {
        if name == "from" {
            req.from = v;
        } else {
            req.to = v;
        }
    }
    report_range(&req.from, &req.to)?;
    Ok(req)
}

/// The report's days (since 1970-01-01): `from..=to`, at most [`MAX_REPORT_DAYS`].
///
/// # Errors
/// INVALID_ARGUMENT naming `from` or `to`.
pub fn report_range(from: &str, to: &str) -> Result<(u64, u64), ApiError> {
    let from = parse_day(from).map_err(|e| ApiError::invalid(format!("from: {e}")))?;
    let to = parse_day(to).map_err(|e| ApiError::invalid(format!("to: {e}")))?;
    if to < from {
        return Err(ApiError::invalid("to: before from"));
    }
    if to - from >= MAX_REPORT_DAYS {
        return Err(ApiError::invalid(format!(
            "to: a report covers at most {MAX_REPORT_DAYS} days"
        )));
    }
    Ok((from, to))
}

/// Days since 1970-01-01 of a UTC date `YYYY-MM-DD` (years 1970..=9999).
///
/// # Errors
/// What is wrong with it.
pub fn parse_day(date: &str) -> Result<u64, &'static str> {
    let bytes = date.as_bytes();
    let well_formed = bytes.len() == 10
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes
            .iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    if !well_formed {
        return Err("a date is YYYY-MM-DD");
    }
    let num = |r: std::ops::Range<usize>| -> u64 {
        bytes[r]
            .iter()
            .fold(0, |acc, c| acc * 10 + u64::from(c - b'0'))
    };
    let (year, month, day) = (num(0..4), num(5..7), num(8..10));
    if year < 1970 {
        return Err("a date is 1970-01-01 or later");
    }
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return Err("no such day");
    }
    Ok(days_from_civil(year, month, day))
}

fn is_leap(y: u64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: u64, m: u64) -> u64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Howard Hinnant's `days_from_civil`, for years >= 1970.
fn days_from_civil(y: u64, m: u64, d: u64) -> u64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The UTC date `YYYY-MM-DD` of a day since 1970-01-01 (`civil_from_days`).
pub fn format_day(days: u64) -> String {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// A unix time as UTC `YYYY-MM-DDTHH:MM:SSZ` (empty for 0 = never).
pub fn format_time(t: u64) -> String {
    if t == 0 {
        return String::new();
    }
    let s = t % DAY_SECS;
    format!(
        "{}T{:02}:{:02}:{:02}Z",
        format_day(t / DAY_SECS),
        s / 3600,
        s % 3600 / 60,
        s % 60
    )
}

// ---------------------------------------------------------------------------------------------
// CSV
// ---------------------------------------------------------------------------------------------

/// One CSV cell: text (guarded against spreadsheet formula injection) or a number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    Text(String),
    Num(i128),
}

/// A text cell as written: one starting with `=`, `+`, `-`, `@`, a tab or a carriage return is
/// prefixed with `'`, so a spreadsheet shows it as text instead of evaluating it (OWASP's CSV
/// injection guidance).
pub fn guard_text(s: &str) -> String {
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_owned()
    }
}

/// An RFC 4180 document (CRLF line ends, a header row, quoting by the `csv` crate).
///
/// # Errors
/// INTERNAL when the writer fails (it writes to memory).
pub fn csv_document(header: &[&str], rows: &[Vec<Cell>]) -> Result<Vec<u8>, ApiError> {
    let fail = |e: csv::Error| ApiError::new(ErrorCode::Internal, format!("cannot write CSV: {e}"));
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(Vec::new());
    w.write_record(header).map_err(fail)?;
    for row in rows {
        w.write_record(row.iter().map(|c| match c {
            Cell::Text(s) => guard_text(s),
            Cell::Num(n) => n.to_string(),
        }))
        .map_err(fail)?;
    }
    w.into_inner()
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("cannot write CSV: {e}")))
}

fn text(s: impl Into<String>) -> Cell {
    Cell::Text(s.into())
}

fn num(n: impl Into<i128>) -> Cell {
    Cell::Num(n.into())
}

fn status_name(v: i32) -> &'static str {
    pb::SessionStatus::try_from(v).map_or("", |s| s.as_str_name())
}

fn secs(t: i64) -> u64 {
    u64::try_from(t).unwrap_or(0)
}

pub const SESSIONS_CSV_HEADER: [&str; 16] = [
    "session_id",
    "status",
    "device_id",
    "user_id",
    "created_at",
    "created_utc",
    "started_at",
    "ended_at",
    "ended_utc",
    "units",
    "unit_name",
    "price_per_unit",
    "hold_amount",
    "amount",
    "currency",
    "closed_by",
];

fn sessions_csv(list: &pb::SessionList) -> Result<Vec<u8>, ApiError> {
    let rows: Vec<Vec<Cell>> = list
        .sessions
        .iter()
        .map(|s| {
            vec![
                text(&s.session_id),
                text(status_name(s.status)),
                text(&s.device_id),
                text(&s.user_id),
                num(s.created_at),
                text(format_time(secs(s.created_at))),
                num(s.started_at),
                num(s.ended_at),
                text(format_time(secs(s.ended_at))),
                num(s.units),
                text(&s.unit_name),
                num(s.price_per_unit),
                num(s.hold_amount),
                num(s.amount),
                text(&s.currency),
                text(match pb::CloseReason::try_from(s.closed_by) {
                    Ok(pb::CloseReason::Report) => "REPORT",
                    Ok(pb::CloseReason::Timeout) => "TIMEOUT",
                    _ => "",
                }),
            ]
        })
        .collect();
    csv_document(&SESSIONS_CSV_HEADER, &rows)
}

pub const STATEMENT_CSV_HEADER: [&str; 11] = [
    "entry_id",
    "at",
    "at_utc",
    "kind",
    "amount",
    "available_delta",
    "currency",
    "debit",
    "credit",
    "session_id",
    "actor",
];

fn statement_csv(st: &pb::Statement) -> Result<Vec<u8>, ApiError> {
    let rows: Vec<Vec<Cell>> = st
        .entries
        .iter()
        .map(|e| {
            vec![
                text(&e.entry_id),
                num(e.at),
                text(format_time(secs(e.at))),
                text(&e.kind),
                num(e.amount),
                num(e.available_delta),
                text(&e.currency),
                text(&e.debit),
                text(&e.credit),
                text(&e.session_id),
                text(&e.actor),
            ]
        })
        .collect();
    csv_document(&STATEMENT_CSV_HEADER, &rows)
}

pub const SALES_CSV_HEADER: [&str; 8] = [
    "day",
    "device_id",
    "sessions",
    "units",
    "captured",
    "refunded",
    "net",
    "currency",
];

/// The sales report as CSV (the API's `text/csv` answer and the console's download).
pub(crate) fn sales_csv(r: &pb::SalesReport) -> Result<Vec<u8>, ApiError> {
    let rows: Vec<Vec<Cell>> = r
        .rows
        .iter()
        .map(|row| {
            vec![
                text(&row.day),
                text(&row.device_id),
                num(row.sessions),
                num(row.units),
                num(row.captured),
                num(row.refunded),
                num(row.net),
                text(&row.currency),
            ]
        })
        .collect();
    csv_document(&SALES_CSV_HEADER, &rows)
}

/// How a list answers: CSV when `Accept` names `text/csv`, else protobuf or JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Csv,
    Wire(crate::http::Format),
}

fn answer_of(headers: &HeaderMap) -> Answer {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if accept.contains(CSV) {
        Answer::Csv
    } else if accept.contains(PROTOBUF) {
        Answer::Wire(crate::http::Format::Protobuf)
    } else {
        Answer::Wire(crate::http::Format::Json)
    }
}

/// A list's answer: CSV (`csv`) when `Accept` names `text/csv`, else protobuf or JSON; the
/// next page's cursor (`next`) in `x-next-cursor` with CSV.
pub(crate) fn list_answer<T: prost::Message + serde::Serialize>(
    list: T,
    headers: &HeaderMap,
    csv: fn(&T) -> Result<Vec<u8>, ApiError>,
    next: fn(&T) -> &String,
) -> Response {
    match answer_of(headers) {
        Answer::Csv => csv_response(csv(&list), next(&list)),
        Answer::Wire(f) => Reply(list, f).into_response(),
    }
}

/// The CSV answer; the next page's cursor (if any) in `x-next-cursor`.
fn csv_response(body: Result<Vec<u8>, ApiError>, next_cursor: &str) -> Response {
    match body {
        Ok(b) => {
            let mut r = ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], b).into_response();
            if let Ok(v) = HeaderValue::from_str(next_cursor) {
                if !next_cursor.is_empty() {
                    r.headers_mut().insert("x-next-cursor", v);
                }
            }
            r
        }
        Err(e) => e.into_response(),
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP routes
// ---------------------------------------------------------------------------------------------

/// The phone's routes: `GET /v1/sessions`, `GET /v1/wallet/ledger`.
pub fn phone_routes() -> Router<App> {
    Router::new()
        .route("/v1/sessions", get(my_sessions_http))
        .route("/v1/wallet/ledger", get(my_ledger_http))
}

/// The operator's routes: `GET /v1/ops/sessions`, `GET /v1/ops/wallets/{userId}/ledger`,
/// `GET /v1/ops/reports/sales`.
pub fn ops_routes() -> Router<App> {
    Router::new()
        .route("/v1/ops/sessions", get(list_sessions_http))
        .route("/v1/ops/wallets/{user_id}/ledger", get(user_ledger_http))
        .route("/v1/ops/reports/sales", get(sales_http))
}

fn sessions_answer(list: pb::SessionList, headers: &HeaderMap) -> Response {
    match answer_of(headers) {
        Answer::Csv => csv_response(sessions_csv(&list), &list.next_cursor),
        Answer::Wire(f) => Reply(list, f).into_response(),
    }
}

fn statement_answer(st: pb::Statement, headers: &HeaderMap) -> Response {
    match answer_of(headers) {
        Answer::Csv => csv_response(statement_csv(&st), &st.next_cursor),
        Answer::Wire(f) => Reply(st, f).into_response(),
    }
}

async fn list_sessions_http(
    State(app): State<App>,
    OpsCaller(op): OpsCaller,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    app.authorize(&op, &Action::ReadMoney)?;
    let req = sessions_query(q.as_deref())?;
    Ok(sessions_answer(
        app.list_sessions(&op, req).await?,
        &headers,
    ))
}

async fn my_sessions_http(
    State(app): State<App>,
    PhoneUser(user): PhoneUser,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (limit, cursor) = page_query(q.as_deref())?;
    let req = pb::ListMySessionsRequest { limit, cursor };
    Ok(sessions_answer(
        app.my_sessions(&user, req).await?,
        &headers,
    ))
}

async fn user_ledger_http(
    State(app): State<App>,
    OpsCaller(op): OpsCaller,
    Path(user_id): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    app.authorize(&op, &Action::ReadMoney)?;
    let (limit, cursor) = page_query(q.as_deref())?;
    let req = pb::OpsLedgerRequest {
        user_id,
        limit,
        cursor,
    };
    Ok(statement_answer(app.user_ledger(&op, req).await?, &headers))
}

async fn my_ledger_http(
    State(app): State<App>,
    PhoneUser(user): PhoneUser,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (limit, cursor) = page_query(q.as_deref())?;
    let req = pb::LedgerRequest { limit, cursor };
    Ok(statement_answer(app.my_ledger(&user, req).await?, &headers))
}

async fn sales_http(
    State(app): State<App>,
    OpsCaller(op): OpsCaller,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    app.authorize(&op, &Action::ReadReports)?;
    let req = sales_query(q.as_deref())?;
    let report = app.sales_report(&op, req).await?;
    Ok(match answer_of(&headers) {
        Answer::Csv => csv_response(sales_csv(&report), ""),
        Answer::Wire(f) => Reply(report, f).into_response(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip_through_days() {
        assert_eq!(parse_day("1970-01-01"), Ok(0));
        assert_eq!(parse_day("2026-02-02"), Ok(1_770_000_000 / DAY_SECS));
        assert_eq!(format_day(20_486), "2026-02-02");
        assert_eq!(
            parse_day("2024-02-29").map(format_day).as_deref(),
            Ok("2024-02-29")
        );
        assert!(parse_day("2025-02-29").is_err());
        assert!(parse_day("2025-13-01").is_err());
        assert!(parse_day("1969-12-31").is_err());
        assert!(parse_day("2025-1-01").is_err());
        assert_eq!(format_time(1_770_000_000), "2026-02-02T02:40:00Z");
    }

    #[test]
    fn a_report_range_is_bounded() {
        assert!(report_range("2026-01-01", "2026-12-31").is_ok());
        assert!(
            report_range("2024-01-01", "2024-12-31").is_ok(),
            "366 days of a leap year"
        );
        assert!(report_range("2026-01-01", "2027-01-02").is_err());
        assert!(report_range("2026-01-02", "2026-01-01").is_err());
    }

    #[test]
    fn text_cells_that_a_spreadsheet_would_evaluate_are_guarded() {
        for bad in ["=1+1", "+1", "-2", "@SUM(A1)", "\tx", "\rx"] {
            assert!(guard_text(bad).starts_with('\''), "{bad:?}");
        }
        assert_eq!(guard_text("alice"), "alice");
        let doc = csv_document(&["a", "b"], &[vec![text("=HYPERLINK(\"x\")"), num(-5)]]).unwrap();
        assert_eq!(
            String::from_utf8(doc).unwrap(),
            "a,b\r\n\"'=HYPERLINK(\"\"x\"\")\",-5\r\n"
        );
    }

    #[test]
    fn unknown_and_repeated_parameters_are_refused() {
        assert!(sessions_query(Some("deviceID=1")).is_err());
        assert!(sessions_query(Some("limit=1&limit=2")).is_err());
        assert!(sessions_query(Some("status=SETTLED&from=1&to=2")).is_ok());
        assert!(sessions_query(Some("status=UNSPECIFIED")).is_err());
        assert!(sessions_query(Some("from=5&to=4")).is_err());
        assert!(page_query(Some("limit=0")).is_err());
        assert!(
            sales_query(Some("from=2026-01-01")).is_err(),
            "to is required"
        );
    }
}
