//! The operator console (docs/dashboard.md): server-rendered HTML at `/ops/` on the back-office
//! API's own [`App`] methods, so every page and action is authorized by the same
//! [`crate::App::authorize`] as the JSON API, and the role table lives once
//! ([`crate::operator::Role::allows`]).
//!
//! - **Sign-in** with an operator token (the bootstrap `BLEPAY_OPS_TOKEN` or one from
//!   `POST /v1/ops/operators`) opens a server-side session (the store keeps the SHA-256 of the
//!   cookie's 32 random bytes, never the bytes): cookie [`COOKIE`], `HttpOnly`,
//!   `SameSite=Strict`, `Path=/ops`, [`SESSION_TTL_SECS`], `Secure` over TLS. Every request
//!   re-reads the operator, so a revoked operator's sessions end at once; sign-out ends the
//!   session in the store.
//! - **CSRF:** every POST carries `_csrf`, an HMAC of the session secret, compared in constant
//!   time; and a cross-origin `Origin` / `Sec-Fetch-Site` is refused. A refusal changes nothing.
//! - **No script needed:** forms post and redirect (303); console.js only localises times, asks
//!   before destructive actions and refreshes the fleet. The CSP allows scripts and styles from
//!   `/ops/assets/` only.
//! - **Limits:** a form body is at most [`MAX_FORM_BYTES`]; lists show at most [`LIST_LIMIT`]
//!   rows per page with a link to the next.

mod actions;
mod chart;
pub mod fmt;
mod pages;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use blepay_store::{ConsoleSession, OperatorId};
use hmac::{Hmac, Mac};
use maud::{DOCTYPE, Markup, html};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::App;
use crate::error::ApiError;
use crate::operator::{Action, Operator, Role};

/// The session cookie's name.
pub const COOKIE: &str = "blepay_console";
/// How long a console session lasts from sign-in: a working day.
pub const SESSION_TTL_SECS: u64 = 8 * 3600;
/// The largest form body accepted.
pub const MAX_FORM_BYTES: usize = 16 * 1024;
/// Rows per page of a list.
pub const LIST_LIMIT: u32 = 100;
/// The Content-Security-Policy of every console answer.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                       connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

/// Marks a request that arrived over TLS (the main listener inserts it): the cookie is then
/// `Secure`. On AWS, `X-Forwarded-Proto: https` (API Gateway, CloudFront) says the same.
#[derive(Debug, Clone, Copy)]
pub struct OverTls;

/// The console's routes, under `/ops`.
pub fn routes() -> Router<App> {
    Router::new()
        .route("/ops", get(|| async { Redirect::to("/ops/fleet") }))
        .route("/ops/", get(|| async { Redirect::to("/ops/fleet") }))
        .route("/ops/assets/console.css", get(css))
        .route("/ops/assets/console.js", get(js))
        .route(
            "/ops/sign-in",
            get(pages::sign_in_page).post(actions::sign_in),
        )
        .route("/ops/sign-out", post(actions::sign_out))
        .route("/ops/fleet", get(pages::fleet))
        .route(
            "/ops/machines/{device_id}",
            get(pages::machine).post(actions::update_machine),
        )
        .route(
            "/ops/machines/{device_id}/revoke",
            post(actions::revoke_machine),
        )
        .route(
            "/ops/machines/{device_id}/rotate-key",
            post(actions::rotate_key),
        )
        .route("/ops/sessions", get(pages::sessions))
        .route("/ops/sessions/{session_id}", get(pages::session))
        .route("/ops/sessions/{session_id}/refund", post(actions::refund))
        .route("/ops/sessions/{session_id}/close", post(actions::close))
        .route("/ops/problems", get(pages::problems))
        .route("/ops/problems/{problem_id}/dismiss", post(actions::dismiss))
        .route("/ops/wallets", get(pages::wallets))
        .route("/ops/wallets/{user_id}/topup", post(actions::top_up))
        .route("/ops/sales", get(pages::sales))
        .route("/ops/sales.csv", get(pages::sales_csv))
        .route("/ops/audit", get(pages::audit))
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
        .layer(axum::middleware::map_response(security_headers))
}

async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------------------------

/// The signed-in operator of a console request.
#[derive(Debug, Clone)]
pub struct Signed {
    pub op: Operator,
    /// The operator's name, as an owner created it.
    pub name: String,
    /// This session's CSRF token, put in every form.
    pub csrf: String,
    id_hash: [u8; 32],
    /// Whether the operator's role allows `support_refund_max`-bounded refunds and so on: the
    /// deployment's cap, for [`Signed::may`].
    refund_cap: blepay_core::Amount,
}

impl Signed {
    /// Whether the role may perform `action` (what the page shows; the server checks anyway).
    pub fn may(&self, action: &Action) -> bool {
        self.op.role.allows(action, self.refund_cap)
    }
}

/// The session id's SHA-256, as the store keys it.
fn session_hash(secret: &[u8; 32]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

/// The CSRF token of the session with `secret`: HMAC-SHA256(secret, "blepay console csrf").
fn csrf_token(secret: &[u8; 32]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(b"blepay console csrf");
    hex::encode(mac.finalize().into_bytes())
}

/// The session secret in a request's cookies, if one is well formed.
fn cookie_secret(headers: &HeaderMap) -> Option<[u8; 32]> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .and_then(|(_, v)| {
            let mut out = [0u8; 32];
            hex::decode_to_slice(v, &mut out).ok().map(|()| out)
        })
}

/// Whether the request arrived over TLS (directly, or at an HTTPS front door).
fn is_tls(parts_ext: &axum::http::Extensions, headers: &HeaderMap) -> bool {
    parts_ext.get::<OverTls>().is_some()
        || headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

fn session_cookie(value: &str, max_age: u64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={value}; Path=/ops; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}")
}

impl App {
    /// Open a console session for `op`: the cookie's value and the CSRF token.
    async fn open_console_session(&self, op: &Operator) -> Result<String, ApiError> {
        let secret: [u8; 32] = rand::random();
        let now = self.now();
        let session = ConsoleSession {
            id_hash: session_hash(&secret),
            operator: op.principal.clone(),
            role: op.role.as_str().to_owned(),
            created_at: now,
            expires_at: now.saturating_add(SESSION_TTL_SECS),
            ended_at: None,
        };
        if !self.store().create_console_session(&session).await? {
            // 256 random bits colliding: the generator is broken; sign nobody in.
            return Err(ApiError::new(
                crate::error::ErrorCode::Internal,
                "could not open a console session",
            ));
        }
        Ok(hex::encode(secret))
    }

    /// The operator a live console session with `secret` belongs to, re-read: a revoked
    /// operator, or a bootstrap session once `BLEPAY_OPS_TOKEN` is gone, is signed out.
    async fn console_operator(
        &self,
        secret: &[u8; 32],
    ) -> Result<Option<(Operator, String)>, ApiError> {
        let Some(s) = self.store().console_session(&session_hash(secret)).await? else {
            return Ok(None);
        };
        if !s.is_live(self.now()) {
            return Ok(None);
        }
        if s.operator == Operator::BOOTSTRAP_PRINCIPAL {
            return Ok(Some((Operator::bootstrap(), "ops token".to_owned())));
        }
        let Some(id) = s
            .operator
            .strip_prefix("op:")
            .and_then(|id| OperatorId::parse(id).ok())
        else {
            return Ok(None);
        };
        let Some(rec) = self.store().operator(&id).await? else {
            return Ok(None);
        };
        if rec.is_revoked() {
            return Ok(None);
        }
        Ok(Role::parse(&rec.role).map(|role| {
            let op = Operator {
                principal: rec.id.principal(),
                role,
            };
            (op, rec.name.as_str().to_owned())
        }))
    }
}

impl FromRequestParts<App> for Signed {
    type Rejection = ConsoleError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let Some(secret) = cookie_secret(&parts.headers) else {
            return Err(ConsoleError::SignIn);
        };
        match app.console_operator(&secret).await {
            Ok(Some((op, name))) => Ok(Self {
                op,
                name,
                csrf: csrf_token(&secret),
                id_hash: session_hash(&secret),
                refund_cap: app.config().support_refund_max,
            }),
            Ok(None) => Err(ConsoleError::SignIn),
            Err(e) => Err(ConsoleError::Api(e)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Forms
// ---------------------------------------------------------------------------------------------

/// A urlencoded form's fields.
#[derive(Debug, Default)]
pub struct Fields(Vec<(String, String)>);

impl Fields {
    pub fn parse(body: &[u8]) -> Self {
        Self(form_urlencoded::parse(body).into_owned().collect())
    }

    /// The first value of `name`, trimmed; empty when absent.
    pub fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.trim())
    }
}

/// Refuse a cross-site request: an `Origin` that is not this host, or `Sec-Fetch-Site` other
/// than `same-origin` / `none`. A request carrying neither (curl, an old browser) passes to the
/// CSRF token check.
fn same_origin(headers: &HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) {
        let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        if host != Some(origin_host) {
            return false;
        }
    }
    match headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        Some(site) => site == "same-origin" || site == "none",
        None => true,
    }
}

impl Signed {
    /// The fields of a state-changing form, once its origin and `_csrf` are checked.
    ///
    /// # Errors
    /// [`ConsoleError::Csrf`] (403, nothing changed).
    pub fn form(&self, headers: &HeaderMap, body: &[u8]) -> Result<Fields, ConsoleError> {
        if !same_origin(headers) {
            return Err(ConsoleError::Csrf);
        }
        let fields = Fields::parse(body);
        let given = fields.get("_csrf");
        if given.is_empty() || !bool::from(given.as_bytes().ct_eq(self.csrf.as_bytes())) {
            return Err(ConsoleError::Csrf);
        }
        Ok(fields)
    }
}

// ---------------------------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------------------------

/// Why a console request was not served.
#[derive(Debug)]
pub enum ConsoleError {
    /// Not signed in (or the session ended): GET goes to the sign-in page.
    SignIn,
    /// A state-changing request without the right CSRF token or from another origin.
    Csrf,
    /// What the API refused (FORBIDDEN, INVALID_ARGUMENT, NOT_FOUND, ...).
    Api(ApiError),
}

impl From<ApiError> for ConsoleError {
    fn from(e: ApiError) -> Self {
        Self::Api(e)
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        match self {
            Self::SignIn => Redirect::to("/ops/sign-in").into_response(),
            Self::Csrf => error_page(
                StatusCode::FORBIDDEN,
                "CSRF_FAILED",
                "the form's CSRF token is missing or wrong, or it came from another site; nothing was changed — reload the page and try again",
            ),
            Self::Api(e) => error_page(e.code.http_status(), e.code.as_str(), &e.message),
        }
    }
}

fn error_page(status: StatusCode, code: &str, message: &str) -> Response {
    let body = html! {
        (DOCTYPE)
        html lang="en" {
            head { (head_tags("Refused")) }
            body {
                main class="narrow" {
                    h1 { "Not done" }
                    p id="error" class="error" { (code) ": " (message) }
                    p { a href="/ops/fleet" { "Back to the console" } }
                }
            }
        }
    };
    (status, body).into_response()
}

fn head_tags(title: &str) -> Markup {
    html! {
        meta charset="utf-8";
        meta name="viewport" content="width=device-width, initial-scale=1";
        title { (title) " · blepay" }
        link rel="stylesheet" href="/ops/assets/console.css";
        script src="/ops/assets/console.js" defer {}
    }
}

/// The pages' navigation entries: (id, path, label, what the role needs to see it).
const NAV: [(&str, &str, &str, Action); 6] = [
    ("nav-fleet", "/ops/fleet", "Fleet", Action::ReadDevices),
    (
        "nav-sessions",
        "/ops/sessions",
        "Sessions",
        Action::ReadMoney,
    ),
    (
        "nav-problems",
        "/ops/problems",
        "Problems",
        Action::ReadMoney,
    ),
    ("nav-wallets", "/ops/wallets", "Wallets", Action::ReadMoney),
    ("nav-sales", "/ops/sales", "Sales", Action::ReadReports),
    ("nav-audit", "/ops/audit", "Audit", Action::ReadAudit),
];

/// A full page: header with the navigation (what the role may see), who is signed in and
/// sign-out; a flash message when `flash` names one; then `content`.
pub fn page(
    signed: &Signed,
    title: &str,
    current: &str,
    flash: Option<&str>,
    content: &Markup,
) -> Response {
    let body = html! {
        (DOCTYPE)
        html lang="en" {
            head { (head_tags(title)) }
            body {
                header {
                    a class="brand" href="/ops/fleet" { "blepay" }
                    nav id="nav" {
                        @for (id, path, label, need) in &NAV {
                            @if signed.may(need) {
                                a id=(id) href=(path) class=[(*path == current).then_some("current")] { (label) }
                            }
                        }
                    }
                    span id="whoami" title=(signed.op.principal) { (signed.name) " (" (signed.op.role.as_str()) ")" }
                    form id="sign-out" method="post" action="/ops/sign-out" {
                        (csrf_input(signed))
                        button id="sign-out-button" type="submit" { "Sign out" }
                    }
                }
                main {
                    @if let Some(text) = flash.and_then(flash_text) {
                        p id="flash" class="flash" { (text) }
                    }
                    (content)
                }
            }
        }
    };
    body.into_response()
}

/// The hidden `_csrf` input of a form.
pub fn csrf_input(signed: &Signed) -> Markup {
    html! { input type="hidden" name="_csrf" value=(signed.csrf); }
}

/// A hidden idempotency key: a form submitted twice (a reload, a double click) acts once.
pub fn idempotency_input() -> Markup {
    html! { input type="hidden" name="idempotency_key" value=(hex::encode(rand::random::<[u8; 16]>())); }
}

/// The messages a redirect after an action may show (`?done=<key>`): fixed text, so a link
/// cannot make the console say anything else.
fn flash_text(key: &str) -> Option<&'static str> {
    Some(match key {
        "refunded" => "Refund made.",
        "closed" => "Session closed.",
        "dismissed" => "Problem dismissed.",
        "topped-up" => "Wallet topped up.",
        "updated" => "Machine updated.",
        "revoked" => "Machine key revoked: the machine is refused until it is given a new key.",
        "rotated" => "Key rotation started: the machine picks up its new key on its next request.",
        _ => return None,
    })
}

/// A 303 to `path` with the flash `done`.
pub fn done(path: &str, done: &str) -> Response {
    let sep = if path.contains('?') { '&' } else { '?' };
    Redirect::to(&format!("{path}{sep}done={done}")).into_response()
}

/// `<time>` of unix seconds (0 = never), localised by console.js.
pub fn time(secs: i64) -> Markup {
    match u64::try_from(secs) {
        Ok(s) if s > 0 => html! { time datetime=(fmt::rfc3339(s)) { (fmt::utc_text(s)) } },
        _ => html! { span class="muted" { "never" } },
    }
}

/// `s` percent-encoded for a query string value (maud escapes HTML, not URLs).
pub fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                *k,
                HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static("")),
            );
        }
        h
    }

    #[test]
    fn the_cookie_is_read_among_others_and_only_when_well_formed() {
        let secret = [7u8; 32];
        let v = hex::encode(secret);
        let h = headers(&[("cookie", &format!("a=b; {COOKIE}={v}; c=d"))]);
        assert_eq!(cookie_secret(&h), Some(secret));
        assert_eq!(
            cookie_secret(&headers(&[("cookie", &format!("{COOKIE}=zz"))])),
            None
        );
        assert_eq!(
            cookie_secret(&headers(&[("cookie", &format!("{COOKIE}={}", &v[..62]))])),
            None
        );
        assert_eq!(cookie_secret(&HeaderMap::new()), None);
    }

    #[test]
    fn the_cookie_has_every_attribute() {
        let c = session_cookie("ab", 60, true);
        for attr in [
            "HttpOnly",
            "SameSite=Strict",
            "Path=/ops",
            "Max-Age=60",
            "Secure",
        ] {
            assert!(c.contains(attr), "{c}");
        }
        assert!(!session_cookie("ab", 60, false).contains("Secure"));
    }

    #[test]
    fn csrf_tokens_differ_per_session_and_are_not_the_secret() {
        let a = csrf_token(&[1; 32]);
        assert_eq!(a.len(), 64);
        assert_ne!(a, csrf_token(&[2; 32]));
        assert_ne!(a, hex::encode([1u8; 32]));
        assert_ne!(hex::encode(session_hash(&[1; 32])), a);
    }

    #[test]
    fn cross_site_posts_are_refused() {
        assert!(same_origin(&headers(&[
            ("host", "x:1"),
            ("origin", "http://x:1")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "x:1"),
            ("origin", "http://evil")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "x:1"),
            ("sec-fetch-site", "cross-site")
        ])));
        assert!(same_origin(&headers(&[
            ("host", "x:1"),
            ("sec-fetch-site", "same-origin")
        ])));
        assert!(same_origin(&headers(&[("host", "x:1")])));
    }

    #[test]
    fn flash_keys_are_fixed_text() {
        assert!(flash_text("refunded").is_some());
        assert!(flash_text("<script>").is_none());
    }
}
