//! The console's actions (POST): each checks the form's origin and CSRF token
//! ([`Signed::form`]), then calls the same [`App`] method as the JSON API, which authorizes the
//! role and writes the audit trail; then a 303 back to the page with a fixed flash message.

use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use blepay_proto::pb::v1 as pb;

use super::{
    ConsoleError, Fields, OverTls, SESSION_TTL_SECS, Signed, done, fmt, is_tls, pages,
    session_cookie,
};
use crate::App;
use crate::error::ApiError;

type Answer = Result<Response, ConsoleError>;

/// A typed amount in the deployment's minor units.
fn amount(app: &App, fields: &Fields, name: &str) -> Result<i64, ApiError> {
    let digits = fmt::minor_digits(app.config().currency.as_str());
    fmt::parse_amount(fields.get(name), digits)
        .map_err(|e| ApiError::invalid(format!("{name}: {e}")))
}

/// `POST /ops/sign-in`: an operator token opens a session.
pub async fn sign_in(
    State(app): State<App>,
    tls: Option<Extension<OverTls>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // A sign-in from another site would sign the victim into the attacker's account.
    if !super::same_origin(&headers) {
        return ConsoleError::Csrf.into_response();
    }
    let fields = Fields::parse(&body);
    let bearer = format!("Bearer {}", fields.get("token"));
    let op = match app.authenticate_operator(Some(&bearer)).await {
        Ok(op) => op,
        Err(e) if e.code == crate::error::ErrorCode::Unauthenticated => {
            return (
                StatusCode::UNAUTHORIZED,
                pages::sign_in_form(Some(
                    "That token is not an operator token of this deployment (or it was revoked).",
                )),
            )
                .into_response();
        }
        Err(e) => return ConsoleError::Api(e).into_response(),
    };
    let value = match app.open_console_session(&op).await {
        Ok(v) => v,
        Err(e) => return ConsoleError::Api(e).into_response(),
    };
    tracing::info!(principal = %op.principal, role = op.role.as_str(), "console sign-in");
    let mut ext = axum::http::Extensions::new();
    if let Some(Extension(t)) = tls {
        ext.insert(t);
    }
    let cookie = session_cookie(&value, SESSION_TTL_SECS, is_tls(&ext, &headers));
    ([(header::SET_COOKIE, cookie)], Redirect::to("/ops/fleet")).into_response()
}

/// `POST /ops/sign-out`: the session ends in the store and the cookie is cleared.
pub async fn sign_out(
    State(app): State<App>,
    signed: Signed,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    signed.form(&headers, &body)?;
    app.store()
        .end_console_session(&signed.id_hash, app.now())
        .await
        .map_err(ApiError::from)?;
    tracing::info!(principal = %signed.op.principal, "console sign-out");
    Ok((
        [(header::SET_COOKIE, session_cookie("", 0, false))],
        Redirect::to("/ops/sign-in"),
    )
        .into_response())
}

/// `POST /ops/machines/{id}`: the tariff form (name, price, unit) or the service form.
pub async fn update_machine(
    State(app): State<App>,
    signed: Signed,
    Path(device_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let f = signed.form(&headers, &body)?;
    let mut req = pb::UpdateDeviceRequest {
        device_id: device_id.clone(),
        ..Default::default()
    };
    match f.get("service_state") {
        "" => {
            req.name = Some(f.get("name").to_owned());
            req.tariff = Some(pb::Tariff {
                price_per_unit: amount(&app, &f, "price")?,
                unit_name: f.get("unit_name").to_owned(),
                currency: app.config().currency.as_str().to_owned(),
            });
        }
        "IN_SERVICE" => req.service_state = pb::ServiceState::InService.into(),
        "OUT_OF_SERVICE" => req.service_state = pb::ServiceState::OutOfService.into(),
        other => return Err(ApiError::invalid(format!("service_state: unknown {other:?}")).into()),
    }
    let d = app.update_device(&signed.op, req).await?;
    Ok(done(&format!("/ops/machines/{}", d.device_id), "updated"))
}

pub async fn revoke_machine(
    State(app): State<App>,
    signed: Signed,
    Path(device_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let f = signed.form(&headers, &body)?;
    let d = app
        .revoke_device(
            &signed.op,
            pb::RevokeDeviceRequest {
                device_id,
                reason: f.get("reason").to_owned(),
            },
        )
        .await?;
    Ok(done(&format!("/ops/machines/{}", d.device_id), "revoked"))
}

pub async fn rotate_key(
    State(app): State<App>,
    signed: Signed,
    Path(device_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let f = signed.form(&headers, &body)?;
    app.rotate_device_key(
        &signed.op,
        pb::RotateDeviceKeyRequest {
            device_id: device_id.clone(),
            idempotency_key: f.get("idempotency_key").to_owned(),
        },
    )
    .await?;
    Ok(done(&format!("/ops/machines/{device_id}"), "rotated"))
}

pub async fn refund(
    State(app): State<App>,
    signed: Signed,
    Path(session_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let f = signed.form(&headers, &body)?;
    let s = app
        .refund_session(
            &signed.op,
            pb::RefundRequest {
                session_id,
                amount: amount(&app, &f, "amount")?,
                reason: f.get("reason").to_owned(),
                idempotency_key: f.get("idempotency_key").to_owned(),
            },
        )
        .await?;
    Ok(done(&format!("/ops/sessions/{}", s.session_id), "refunded"))
}

pub async fn close(
    State(app): State<App>,
    signed: Signed,
    Path(session_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let f = signed.form(&headers, &body)?;
    let s = app
        .close_session(
            &signed.op,
            pb::CloseSessionRequest {
                session_id,
                reason: f.get("reason").to_owned(),
            },
        )
        .await?;
    Ok(done(&format!("/ops/sessions/{}", s.session_id), "closed"))
}

pub async fn dismiss(
    State(app): State<App>,
    signed: Signed,
    Path(problem_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let f = signed.form(&headers, &body)?;
    app.dismiss_problem(
        &signed.op,
        pb::DismissProblemRequest {
            problem_id,
            reason: f.get("reason").to_owned(),
        },
    )
    .await?;
    Ok(done("/ops/problems", "dismissed"))
}

pub async fn top_up(
    State(app): State<App>,
    signed: Signed,
    Path(user_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let f = signed.form(&headers, &body)?;
    let w = app
        .top_up(
            &signed.op,
            pb::TopUpRequest {
                user_id,
                amount: amount(&app, &f, "amount")?,
                idempotency_key: f.get("idempotency_key").to_owned(),
            },
        )
        .await?;
    let user: String = form_urlencoded::byte_serialize(w.user_id.as_bytes()).collect();
    Ok(done(&format!("/ops/wallets?user={user}"), "topped-up"))
}
