//! WeChat Pay API v3: the notify endpoint (RSA-SHA256 signature, AES-256-GCM resource) and the
//! outbound client (App/JSAPI orders, refunds).
//!
//! - `keys`: the merchant's signing key, the platform's verification keys (platform
//!   certificates or "WeChat Pay public keys", `PUB_KEY_ID_…`) and the API v3 key, parsed once;
//!   the signature strings WeChat Pay documents ("签名生成", "签名验证", "调起支付").
//! - `notify`: a notification → a [`ProviderEvent`] (pure: time comes in as `now`).
//! - `client`: `POST /v3/pay/transactions/{app,jsapi}` and `POST /v3/refund/domestic/refunds`,
//!   signed, their answers' signatures verified, 5xx/429/unreachable retried a bounded number
//!   of times (the `out_trade_no` / `out_refund_no` make a retry the same order / refund).
//!
//! Nothing here logs a key, a signature or a decrypted resource.

mod client;
mod keys;
mod notify;

use crate::config::SecretString;
use crate::providers::http::Outbound;
use crate::providers::{ProviderError, RefundAnswer, WebhookError};
use blepay_store::{ProviderEvent, ProviderTopUp, TopUpRefund};

pub use keys::{app_sign_message, jsapi_sign_message, request_sign_message, verify_sign_message};

/// Where WeChat Pay's API is served.
pub const DEFAULT_API_BASE: &str = "https://api.mch.weixin.qq.com";
/// How far a signed timestamp (notification or answer) may be from our clock.
pub const TIMESTAMP_TOLERANCE_SECS: u64 = 300;
/// The only signature scheme of API v3 (`Authorization` scheme and `Wechatpay-Signature-Type`).
pub const SIGNATURE_SCHEME: &str = "WECHATPAY2-SHA256-RSA2048";

/// A merchant's WeChat Pay configuration.
#[derive(Clone, Debug)]
pub struct WechatPaySettings {
    pub mchid: String,
    pub appid: String,
    /// The API v3 key: 32 bytes (ASCII characters as the merchant platform shows it).
    pub api_v3_key: SecretString,
    /// PKCS#8 RSA private key PEM (apiclient_key.pem).
    pub merchant_private_key_pem: SecretString,
    /// The merchant API certificate's serial number.
    pub merchant_serial: String,
    /// The platform's verification keys: (serial or public key id, PEM). PEM is either an X.509
    /// platform certificate or a "WeChat Pay public key" (SPKI PEM, id like `PUB_KEY_ID_…`).
    pub platform_keys: Vec<(String, String)>,
    pub notify_url: String,
    pub api_base: String,
}

/// The WeChat Pay provider: parsed keys and the shared outbound client.
pub struct WechatPay {
    mchid: String,
    appid: String,
    merchant_serial: String,
    notify_url: String,
    api_base: String,
    keys: keys::Keys,
    outbound: Outbound,
}

impl std::fmt::Debug for WechatPay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WechatPay")
            .field("mchid", &self.mchid)
            .field("appid", &self.appid)
            .field("merchant_serial", &self.merchant_serial)
            .field("api_base", &self.api_base)
            .finish_non_exhaustive()
    }
}

/// A created order: its `prepay_id` and what the app's WeChat SDK needs to pay it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WechatOrder {
    pub prepay_id: String,
    pub client: serde_json::Value,
}

impl WechatPay {
    /// Parse the keys once.
    ///
    /// # Errors
    /// A message naming the setting: a private key that is not a PKCS#8 RSA key of at least 2048
    /// bits, a platform key that is neither an RSA certificate nor an RSA SPKI public key (or a
    /// certificate whose serial is not the one it is configured under), no platform key, an API
    /// v3 key that is not 32 bytes, an empty mchid/appid/serial, or an `api_base` / `notify_url`
    /// that is not `https://` (`http://` only to loopback, for tests).
    pub fn new(settings: WechatPaySettings, outbound: Outbound) -> Result<Self, String> {
        for (name, value) in [
            ("mchid", &settings.mchid),
            ("appid", &settings.appid),
            ("merchant_serial", &settings.merchant_serial),
        ] {
            if value.trim().is_empty() || value.chars().any(|c| c.is_control() || c == '"') {
                return Err(format!("{name}: must be non-empty printable text"));
            }
        }
        let api_base = settings.api_base.trim_end_matches('/').to_owned();
        check_url("api_base", &api_base)?;
        check_url("notify_url", &settings.notify_url)?;
        let keys = keys::Keys::new(&settings)?;
        Ok(Self {
            mchid: settings.mchid,
            appid: settings.appid,
            merchant_serial: settings.merchant_serial,
            notify_url: settings.notify_url,
            api_base,
            keys,
            outbound,
        })
    }

    /// Verify `Wechatpay-Timestamp` / `-Nonce` / `-Signature` / `-Serial` over
    /// `"timestamp\nnonce\nbody\n"` (RSA-SHA256 PKCS#1 v1.5, base64 signature) with the key the
    /// serial names, `|now - timestamp| ≤ 300 s`, then AES-256-GCM-decrypt `resource` with the
    /// API v3 key, and parse.
    ///
    /// `Ok(None)` for what blepay ignores: event types other than `TRANSACTION.SUCCESS` and
    /// `REFUND.{SUCCESS,ABNORMAL,CLOSED}`, a `TRANSACTION.SUCCESS` whose `trade_state` is not
    /// `SUCCESS`, an `out_trade_no` that is not a top-up id (not ours: no top-up could match, so
    /// it is acknowledged rather than retried forever), a failed refund that is not ours.
    ///
    /// # Errors
    /// [`WebhookError::MissingSignature`] (a header missing or not parsing),
    /// [`WebhookError::UnknownCertificate`], [`WebhookError::BadSignature`],
    /// [`WebhookError::StaleTimestamp`]; [`WebhookError::Malformed`] when the signed body does
    /// not parse, its resource does not decrypt (the signature verified, so this is our API v3
    /// key or WeChat Pay's fault: a retry cannot fix it) or names another merchant.
    pub fn verify_notification(
        &self,
        headers: &http::HeaderMap,
        body: &[u8],
        now: u64,
    ) -> Result<Option<ProviderEvent>, WebhookError> {
        self.keys.verify_signed(headers, body, now)?;
        notify::parse(&self.keys, &self.mchid, body, now)
    }

    /// `POST /v3/pay/transactions/app` (`openid` None) or `/v3/pay/transactions/jsapi`
    /// (`payer.openid`), answering the `prepay_id` and [`WechatPay::client_params`].
    ///
    /// # Errors
    /// [`ProviderError::Unreachable`] after 3 attempts (connect/timeout/5xx/429),
    /// [`ProviderError::Refused`] for a 4xx `{code, message}`, [`ProviderError::BadAnswer`] when
    /// the answer's signature does not verify or it does not parse.
    pub async fn create_order(
        &self,
        topup: &ProviderTopUp,
        description: &str,
        openid: Option<&str>,
    ) -> Result<WechatOrder, ProviderError> {
        client::create_order(self, topup, description, openid).await
    }

    /// The app parameters for an existing `prepay_id` (fresh nonce and timestamp, signed again):
    /// App `{appid, partnerid, prepayid, package: "Sign=WXPay", noncestr, timestamp, sign}`
    /// ("APP调起支付"), JSAPI `{appId, timeStamp, nonceStr, package: "prepay_id=…", signType:
    /// "RSA", paySign}` ("JSAPI调起支付").
    ///
    /// # Errors
    /// [`ProviderError::BadAnswer`] if signing fails (it does not with a parsed key).
    pub fn client_params(
        &self,
        prepay_id: &str,
        jsapi: bool,
        now: u64,
    ) -> Result<serde_json::Value, ProviderError> {
        client::client_params(self, prepay_id, jsapi, now, &self.keys.nonce())
    }

    /// `POST /v3/refund/domestic/refunds`: `SUCCESS` → Succeeded, `PROCESSING` → Pending,
    /// `CLOSED` / `ABNORMAL` → Failed.
    ///
    /// # Errors
    /// As [`WechatPay::create_order`]; an unknown `status` is [`ProviderError::BadAnswer`].
    pub async fn refund(
        &self,
        topup: &ProviderTopUp,
        refund: &TopUpRefund,
    ) -> Result<RefundAnswer, ProviderError> {
        client::refund(self, topup, refund).await
    }
}

/// `https://`, or `http://` to loopback (the tests' fixture servers), as [`Outbound`] sends.
fn check_url(name: &str, url: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| format!("{name}: not a URL: {url}"))?;
    let loopback = matches!(
        uri.host(),
        Some("127.0.0.1" | "[::1]" | "::1" | "localhost")
    );
    match uri.scheme_str() {
        Some("https") if uri.host().is_some() => Ok(()),
        Some("http") if loopback => Ok(()),
        _ => Err(format!("{name}: must be an https:// URL: {url}")),
    }
}

/// The notify endpoint's "received": HTTP 200 with no body (WeChat Pay v3 documents 200 or 204,
/// "无需返回应答报文").
pub fn ack() -> (http::StatusCode, Vec<u8>) {
    (http::StatusCode::OK, Vec::new())
}

/// The notify endpoint's "not received" (WeChat Pay retries): a 4xx/5xx `status` with
/// `{"code":"FAIL","message":…}`.
pub fn nack(status: http::StatusCode, message: &str) -> (http::StatusCode, Vec<u8>) {
    let body = serde_json::json!({ "code": "FAIL", "message": message }).to_string();
    (status, body.into_bytes())
}
