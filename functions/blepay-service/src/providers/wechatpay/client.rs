//! The outbound half: orders ("APP下单", "JSAPI下单") and refunds ("申请退款"), each request
//! signed ("签名生成") and each 2xx answer's signature verified ("签名验证").
//!
//! An attempt that gets no answer, a 5xx or a 429 is retried (3 attempts in all, with
//! [`backoff`]), re-signed with a fresh nonce and timestamp: the `out_trade_no` /
//! `out_refund_no` make the retry the same order / refund at WeChat Pay. A 4xx
//! `{code, message}` is a definite refusal.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde::Deserialize;
use serde_json::json;

use super::keys::{VerifyError, app_sign_message, jsapi_sign_message, request_sign_message};
use super::{SIGNATURE_SCHEME, WechatOrder, WechatPay};
use crate::providers::http::{OutboundError, backoff};
use crate::providers::{ProviderError, RefundAnswer};
use blepay_store::{ProviderTopUp, TopUpRefund};

/// Attempts per call, the first included.
pub const MAX_ATTEMPTS: u32 = 3;
/// `description` is string(127); `reason` string(80).
const DESCRIPTION_MAX_CHARS: usize = 127;
const REASON_MAX_CHARS: usize = 80;

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

fn signing_failed() -> ProviderError {
    ProviderError::BadAnswer("signing with the merchant key failed".into())
}

/// The `Authorization` header of a request.
fn authorization(
    p: &WechatPay,
    method: &Method,
    path: &str,
    body: &[u8],
    timestamp: u64,
    nonce: &str,
) -> Result<String, ProviderError> {
    let signature = p
        .keys
        .sign(&request_sign_message(
            method.as_str(),
            path,
            timestamp,
            nonce,
            body,
        ))
        .map_err(|()| signing_failed())?;
    Ok(format!(
        "{SIGNATURE_SCHEME} mchid=\"{}\",nonce_str=\"{nonce}\",signature=\"{signature}\",timestamp=\"{timestamp}\",serial_no=\"{}\"",
        p.mchid, p.merchant_serial
    ))
}

/// The order answer: `{"prepay_id": …}`.
#[derive(Deserialize)]
struct Prepay {
    prepay_id: String,
}

/// The refund answer: of its fields only `status` decides.
#[derive(Deserialize)]
struct RefundCreated {
    status: String,
}

/// An error answer: `{"code": …, "message": …}` (and a `detail` we do not need).
#[derive(Deserialize)]
struct ErrorAnswer {
    code: String,
    #[serde(default)]
    message: String,
}

/// POST `body` to `path`, retried; the verified 2xx answer's body.
async fn post(p: &WechatPay, path: &str, body: &serde_json::Value) -> Result<Bytes, ProviderError> {
    let body = body.to_string().into_bytes();
    let url = format!("{}{path}", p.api_base);
    let mut last = String::new();
    for attempt in 1..=MAX_ATTEMPTS {
        if attempt > 1 {
            tokio::time::sleep(backoff(attempt - 1)).await;
        }
        let auth = authorization(p, &Method::POST, path, &body, now_secs(), &p.keys.nonce())?;
        let request = Request::post(url.as_str())
            .header(http::header::AUTHORIZATION, auth)
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("blepay/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(Bytes::from(body.clone())))
            .map_err(|e| ProviderError::Unreachable(format!("request: {e}")))?;
        let answer = match p.outbound.send(request).await {
            Ok(a) => a,
            Err(OutboundError::Unreachable(e)) => {
                last = e;
                continue;
            }
            Err(OutboundError::BadAnswer(e)) => return Err(ProviderError::BadAnswer(e)),
            // `new` refuses such an api_base; nothing was sent.
            Err(e @ OutboundError::Insecure(_)) => {
                return Err(ProviderError::Unreachable(e.to_string()));
            }
        };
        let status = answer.status;
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            last = format!("HTTP {status}");
            continue;
        }
        let signed = answer.headers.contains_key(super::keys::H_SIGNATURE);
        if status.is_success() || signed {
            // Every 2xx must be WeChat Pay's; a 4xx is checked when it carries a signature
            // (TLS already authenticates the server).
            p.keys
                .verify_signed(&answer.headers, &answer.body, now_secs())
                .map_err(|e: VerifyError| ProviderError::BadAnswer(format!("answer: {e}")))?;
        }
        if status.is_success() {
            return Ok(answer.body);
        }
        if status.is_client_error() {
            let e: ErrorAnswer = serde_json::from_slice(&answer.body).map_err(|_| {
                ProviderError::BadAnswer(format!("HTTP {status} without an error JSON"))
            })?;
            return Err(ProviderError::Refused {
                status: status.as_u16(),
                code: e.code,
                message: e.message,
            });
        }
        return Err(ProviderError::BadAnswer(format!("HTTP {status}")));
    }
    Err(ProviderError::Unreachable(format!(
        "{MAX_ATTEMPTS} attempts: {last}"
    )))
}

pub async fn create_order(
    p: &WechatPay,
    topup: &ProviderTopUp,
    description: &str,
    openid: Option<&str>,
) -> Result<WechatOrder, ProviderError> {
    let mut body = json!({
        "appid": p.appid,
        "mchid": p.mchid,
        "description": truncate(description, DESCRIPTION_MAX_CHARS),
        "out_trade_no": topup.id.to_string(),
        "notify_url": p.notify_url,
        "amount": { "total": topup.amount.minor(), "currency": topup.currency.as_str() },
    });
    let path = match openid {
        Some(openid) => {
            body["payer"] = json!({ "openid": openid });
            "/v3/pay/transactions/jsapi"
        }
        None => "/v3/pay/transactions/app",
    };
    let prepay_id = decode_prepay(&post(p, path, &body).await?)?;
    let client = client_params(p, &prepay_id, openid.is_some(), now_secs(), &p.keys.nonce())?;
    Ok(WechatOrder { prepay_id, client })
}

/// The app's payment parameters, exactly as "APP调起支付" / "JSAPI调起支付" name them.
pub fn client_params(
    p: &WechatPay,
    prepay_id: &str,
    jsapi: bool,
    now: u64,
    nonce: &str,
) -> Result<serde_json::Value, ProviderError> {
    let timestamp = now.to_string();
    if jsapi {
        let package = format!("prepay_id={prepay_id}");
        let sign = p
            .keys
            .sign(&jsapi_sign_message(&p.appid, &timestamp, nonce, &package))
            .map_err(|()| signing_failed())?;
        Ok(json!({
            "appId": p.appid,
            "timeStamp": timestamp,
            "nonceStr": nonce,
            "package": package,
            "signType": "RSA",
            "paySign": sign,
        }))
    } else {
        let sign = p
            .keys
            .sign(&app_sign_message(&p.appid, &timestamp, nonce, prepay_id))
            .map_err(|()| signing_failed())?;
        Ok(json!({
            "appid": p.appid,
            "partnerid": p.mchid,
            "prepayid": prepay_id,
            "package": "Sign=WXPay",
            "noncestr": nonce,
            "timestamp": timestamp,
            "sign": sign,
        }))
    }
}

pub async fn refund(
    p: &WechatPay,
    topup: &ProviderTopUp,
    refund: &TopUpRefund,
) -> Result<RefundAnswer, ProviderError> {
    let body = json!({
        "out_trade_no": topup.id.to_string(),
        "out_refund_no": refund.id.to_string(),
        "reason": truncate(refund.reason.as_str(), REASON_MAX_CHARS),
        "notify_url": p.notify_url,
        "amount": {
            "refund": refund.amount.minor(),
            "total": topup.amount.minor(),
            "currency": topup.currency.as_str(),
        },
    });
    decode_refund(&post(p, "/v3/refund/domestic/refunds", &body).await?)
}

/// An order answer's `prepay_id`.
///
/// # Errors
/// [`ProviderError::BadAnswer`] when it does not parse or the id is empty.
pub fn decode_prepay(body: &[u8]) -> Result<String, ProviderError> {
    let prepay: Prepay = serde_json::from_slice(body)
        .map_err(|e| ProviderError::BadAnswer(format!("order answer: {e}")))?;
    if prepay.prepay_id.is_empty() || prepay.prepay_id.chars().any(char::is_control) {
        return Err(ProviderError::BadAnswer(
            "empty or unprintable prepay_id".into(),
        ));
    }
    Ok(prepay.prepay_id)
}

/// A refund answer's `status` as a [`RefundAnswer`].
///
/// # Errors
/// [`ProviderError::BadAnswer`] when it does not parse or the status is not one WeChat Pay
/// documents (`SUCCESS`, `PROCESSING`, `CLOSED`, `ABNORMAL`).
pub fn decode_refund(body: &[u8]) -> Result<RefundAnswer, ProviderError> {
    let a: RefundCreated = serde_json::from_slice(body)
        .map_err(|e| ProviderError::BadAnswer(format!("refund answer: {e}")))?;
    match a.status.as_str() {
        "SUCCESS" => Ok(RefundAnswer::Succeeded),
        "PROCESSING" => Ok(RefundAnswer::Pending),
        "CLOSED" | "ABNORMAL" => Ok(RefundAnswer::Failed(format!(
            "WeChat Pay refund {}",
            a.status
        ))),
        other => Err(ProviderError::BadAnswer(format!("refund status {other:?}"))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn answers_decode_as_documented() {
        assert_eq!(
            decode_prepay(br#"{"prepay_id":"wx201410272009395522657a690389285100"}"#).unwrap(),
            "wx201410272009395522657a690389285100"
        );
        assert!(decode_prepay(br#"{"prepay_id":""}"#).is_err());
        assert_eq!(
            decode_refund(br#"{"status":"PROCESSING","refund_id":"1"}"#),
            Ok(RefundAnswer::Pending)
        );
        assert!(decode_refund(br#"{"status":"NEW"}"#).is_err());
    }

    proptest! {
        #[test]
        fn random_answers_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_prepay(&body);
            let _ = decode_refund(&body);
            let _ = serde_json::from_slice::<ErrorAnswer>(&body);
        }
    }
}
