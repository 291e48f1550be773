//! A verified WeChat Pay notification → the [`ProviderEvent`] blepay applies ("支付通知",
//! "退款结果通知").
//!
//! The envelope is `{id, create_time, event_type, resource_type, resource: {algorithm,
//! ciphertext, associated_data, original_type, nonce}, summary}`; the resource decrypts to a
//! transaction (`out_trade_no, transaction_id, trade_state, amount{total, payer_total,
//! currency, payer_currency}`) or a refund (`out_trade_no, out_refund_no, refund_id,
//! refund_status, amount{total, refund, payer_total, payer_refund}`).

use blepay_core::{Amount, Currency, Provider};
use blepay_store::{ProviderEvent, ProviderEventKind, TopUpId, TopUpLocator, TopUpRefundId};
use serde::Deserialize;

use super::keys::Keys;
use crate::providers::WebhookError;

#[derive(Deserialize)]
struct Envelope {
    event_type: String,
    resource: Option<Resource>,
}

#[derive(Deserialize)]
struct Resource {
    algorithm: String,
    ciphertext: String,
    #[serde(default)]
    associated_data: String,
    nonce: String,
}

// Field names are WeChat Pay's.
#[allow(clippy::struct_field_names)]
#[derive(Deserialize)]
struct Transaction {
    mchid: Option<String>,
    out_trade_no: String,
    transaction_id: String,
    trade_state: String,
    amount: TransactionAmount,
}

#[derive(Deserialize)]
struct TransactionAmount {
    total: i64,
    currency: String,
}

#[allow(clippy::struct_field_names)]
#[derive(Deserialize)]
struct Refund {
    mchid: Option<String>,
    out_trade_no: String,
    out_refund_no: String,
    refund_id: String,
    refund_status: String,
    amount: RefundAmount,
}

#[derive(Deserialize)]
struct RefundAmount {
    refund: i64,
}

fn malformed(what: impl Into<String>) -> WebhookError {
    WebhookError::Malformed(what.into())
}

/// Parse a notification whose signature verified. `Ok(None)` for what blepay ignores (see
/// [`super::WechatPay::verify_notification`]).
///
/// # Errors
/// [`WebhookError::Malformed`]: the body or the decrypted resource does not parse, the resource
/// does not decrypt, or it names another merchant than `mchid`.
pub fn parse(
    keys: &Keys,
    mchid: &str,
    body: &[u8],
    now: u64,
) -> Result<Option<ProviderEvent>, WebhookError> {
    let envelope: Envelope =
        serde_json::from_slice(body).map_err(|e| malformed(format!("body: {e}")))?;
    let event = envelope.event_type.as_str();
    let refund_event = matches!(
        event,
        "REFUND.SUCCESS" | "REFUND.ABNORMAL" | "REFUND.CLOSED"
    );
    if event != "TRANSACTION.SUCCESS" && !refund_event {
        return Ok(None);
    }
    let resource = envelope.resource.ok_or_else(|| malformed("no resource"))?;
    if resource.algorithm != "AEAD_AES_256_GCM" {
        return Err(malformed(format!(
            "resource.algorithm {:?}",
            resource.algorithm
        )));
    }
    let plain = keys
        .decrypt(
            &resource.nonce,
            &resource.associated_data,
            &resource.ciphertext,
        )
        .map_err(malformed)?;
    if refund_event {
        refund(&plain, event, mchid, now)
    } else {
        transaction(&plain, mchid, now)
    }
}

fn event_of(key: String, topup: TopUpId, kind: ProviderEventKind, now: u64) -> ProviderEvent {
    ProviderEvent {
        provider: Provider::WechatPay,
        key,
        topup: TopUpLocator::Id(topup),
        kind,
        now,
    }
}

/// A missing `mchid` is taken as ours (the signature is WeChat Pay's).
fn ours(m: Option<&str>, mchid: &str) -> bool {
    m.is_none_or(|m| m == mchid)
}

/// `TRANSACTION.SUCCESS` with `trade_state` `SUCCESS` → Succeeded.
fn transaction(plain: &[u8], mchid: &str, now: u64) -> Result<Option<ProviderEvent>, WebhookError> {
    let t: Transaction =
        serde_json::from_slice(plain).map_err(|e| malformed(format!("transaction: {e}")))?;
    if !ours(t.mchid.as_deref(), mchid) {
        return Err(malformed("transaction for another mchid"));
    }
    if t.trade_state != "SUCCESS" {
        return Ok(None);
    }
    // Not one of our ids: no top-up can match it; acknowledged, not retried forever.
    let Ok(topup) = TopUpId::parse(&t.out_trade_no) else {
        return Ok(None);
    };
    if t.transaction_id.is_empty() {
        return Err(malformed("empty transaction_id"));
    }
    let amount = Amount::new(t.amount.total).map_err(|_| malformed("amount.total out of range"))?;
    let currency = Currency::parse(&t.amount.currency)
        .map_err(|_| malformed("amount.currency is not a currency code"))?;
    Ok(Some(event_of(
        format!("txn:{}", t.transaction_id),
        topup,
        ProviderEventKind::Succeeded {
            amount,
            currency,
            transaction_id: t.transaction_id,
        },
        now,
    )))
}

/// `REFUND.SUCCESS` → Refunded; `REFUND.ABNORMAL` / `REFUND.CLOSED` of one of our refunds →
/// RefundFailed.
fn refund(
    plain: &[u8],
    event: &str,
    mchid: &str,
    now: u64,
) -> Result<Option<ProviderEvent>, WebhookError> {
    let r: Refund = serde_json::from_slice(plain).map_err(|e| malformed(format!("refund: {e}")))?;
    if !ours(r.mchid.as_deref(), mchid) {
        return Err(malformed("refund for another mchid"));
    }
    let Ok(topup) = TopUpId::parse(&r.out_trade_no) else {
        return Ok(None);
    };
    if r.refund_id.is_empty() {
        return Err(malformed("empty refund_id"));
    }
    let ours_refund = TopUpRefundId::parse(&r.out_refund_no).ok();
    if event == "REFUND.SUCCESS" {
        let amount =
            Amount::new(r.amount.refund).map_err(|_| malformed("amount.refund out of range"))?;
        return Ok(Some(event_of(
            format!("refund:{}", r.refund_id),
            topup,
            ProviderEventKind::Refunded {
                refund: ours_refund,
                amount,
            },
            now,
        )));
    }
    // Only one of our refunds has an amount to give back.
    let Some(refund) = ours_refund else {
        return Ok(None);
    };
    let status = if r.refund_status.is_empty() {
        event.trim_start_matches("REFUND.").to_owned()
    } else {
        r.refund_status
    };
    Ok(Some(event_of(
        format!("refund:{}:{status}", r.refund_id),
        topup,
        ProviderEventKind::RefundFailed {
            refund,
            reason: format!("WeChat Pay refund {status}"),
        },
        now,
    )))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(super) mod tests {
    //! Keys are generated per test run (rcgen with aws-lc-rs, RSA-2048), notifications signed
    //! with the test platform key and their resources encrypted with a test API v3 key.

    use super::super::keys::{H_NONCE, H_SERIAL, H_SIGNATURE, H_SIGNATURE_TYPE, H_TIMESTAMP};
    use super::super::{WechatPay, WechatPaySettings, verify_sign_message};
    use super::*;
    use crate::config::SecretString;
    use crate::providers::http::Outbound;
    use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as B64;
    use proptest::prelude::*;
    use rustls_pki_types::PrivatePkcs8KeyDer;
    use rustls_pki_types::pem::PemObject;
    use std::sync::OnceLock;

    pub const API_V3_KEY: &str = "0123456789abcdefghijklmnopqrstuv";
    pub const PUB_KEY_ID: &str = "PUB_KEY_ID_0114232134912410000000000001";
    pub const MCHID: &str = "1900000109";
    const NOW: u64 = 1_765_000_000;
    const TOPUP: &str = "00112233445566778899aabbccddeeff";
    const REFUND: &str = "ffeeddccbbaa99887766554433221100";

    /// The test keys: merchant, platform (as a WeChat Pay public key), platform certificate.
    pub struct TestKeys {
        pub merchant_pem: String,
        pub platform_pem: String,
        pub platform_spki_pem: String,
        pub cert_key_pem: String,
        pub cert_pem: String,
        pub cert_serial: String,
    }

    pub fn test_keys() -> &'static TestKeys {
        static KEYS: OnceLock<TestKeys> = OnceLock::new();
        KEYS.get_or_init(|| {
            let rsa = || rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
            let merchant = rsa();
            let platform = rsa();
            let cert_key = rsa();
            let mut params =
                rcgen::CertificateParams::new(vec!["Tenpay.com Root CA".into()]).unwrap();
            let serial = [0x51u8, 0x57, 0xF0, 0x9E, 0xFD, 0xC0, 0x96, 0xDE];
            params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
            let cert = params.self_signed(&cert_key).unwrap();
            TestKeys {
                merchant_pem: merchant.serialize_pem(),
                platform_pem: platform.serialize_pem(),
                platform_spki_pem: platform.public_key_pem(),
                cert_key_pem: cert_key.serialize_pem(),
                cert_pem: cert.pem(),
                cert_serial: hex::encode_upper(serial),
            }
        })
    }

    pub fn settings(api_base: &str) -> WechatPaySettings {
        let k = test_keys();
        WechatPaySettings {
            mchid: MCHID.into(),
            appid: "wxd678efh567hg6787".into(),
            api_v3_key: SecretString::new(API_V3_KEY.into()),
            merchant_private_key_pem: SecretString::new(k.merchant_pem.clone()),
            merchant_serial: "5157F09EFDC096DE15EBE81A47057A7232F1B8E1".into(),
            platform_keys: vec![
                (PUB_KEY_ID.into(), k.platform_spki_pem.clone()),
                (k.cert_serial.clone(), k.cert_pem.clone()),
            ],
            notify_url: "https://blepay.example/v1/providers/wechatpay/notify".into(),
            api_base: api_base.into(),
        }
    }

    fn provider() -> WechatPay {
        let out = Outbound::new(std::time::Duration::from_secs(1)).unwrap();
        WechatPay::new(settings(super::super::DEFAULT_API_BASE), out).unwrap()
    }

    /// SHA256 with RSA over `message` with a PKCS#8 PEM key, base64.
    pub fn rsa_sign(pem: &str, message: &[u8]) -> String {
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).unwrap();
        let kp = RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).unwrap();
        let mut sig = vec![0; kp.public_modulus_len()];
        kp.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), message, &mut sig)
            .unwrap();
        B64.encode(sig)
    }

    /// A notification body with `plain` encrypted under `key`.
    fn envelope(event_type: &str, plain: &serde_json::Value, key: &str) -> Vec<u8> {
        let nonce = "fdasflkja484";
        let aad = "transaction";
        let k = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key.as_bytes()).unwrap());
        let mut buf = plain.to_string().into_bytes();
        k.seal_in_place_append_tag(
            Nonce::try_assume_unique_for_key(nonce.as_bytes()).unwrap(),
            Aad::from(aad.as_bytes()),
            &mut buf,
        )
        .unwrap();
        serde_json::json!({
            "id": "EV-2018022511223320873",
            "create_time": "2015-05-20T13:29:35+08:00",
            "resource_type": "encrypt-resource",
            "event_type": event_type,
            "summary": "支付成功",
            "resource": {
                "original_type": "transaction",
                "algorithm": "AEAD_AES_256_GCM",
                "ciphertext": B64.encode(&buf),
                "associated_data": aad,
                "nonce": nonce
            }
        })
        .to_string()
        .into_bytes()
    }

    /// The `Wechatpay-*` headers over `body`, signed with `pem`, naming `serial`.
    pub fn signed_headers(pem: &str, serial: &str, ts: u64, body: &[u8]) -> http::HeaderMap {
        let nonce = "5K8264ILTKCH16CQ2502SI8ZNMTM67VS";
        let sig = rsa_sign(pem, &verify_sign_message(&ts.to_string(), nonce, body));
        let mut h = http::HeaderMap::new();
        h.insert(H_TIMESTAMP, ts.to_string().parse().unwrap());
        h.insert(H_NONCE, nonce.parse().unwrap());
        h.insert(H_SIGNATURE, sig.parse().unwrap());
        h.insert(H_SERIAL, serial.parse().unwrap());
        h.insert(
            H_SIGNATURE_TYPE,
            "WECHATPAY2-SHA256-RSA2048".parse().unwrap(),
        );
        h
    }

    fn transaction(trade_state: &str) -> serde_json::Value {
        serde_json::json!({
            "mchid": MCHID, "appid": "wxd678efh567hg6787", "out_trade_no": TOPUP,
            "transaction_id": "1217752501201407033233368018", "trade_type": "APP",
            "trade_state": trade_state, "trade_state_desc": "支付成功", "bank_type": "CMC",
            "attach": "", "success_time": "2018-06-08T10:34:56+08:00",
            "payer": {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
            "amount": {"total": 500, "payer_total": 500, "currency": "CNY", "payer_currency": "CNY"}
        })
    }

    fn refund(status: &str, out_refund_no: &str) -> serde_json::Value {
        serde_json::json!({
            "mchid": MCHID, "out_trade_no": TOPUP,
            "transaction_id": "1217752501201407033233368018",
            "out_refund_no": out_refund_no, "refund_id": "50000000382019052709732678859",
            "refund_status": status, "success_time": "2018-06-08T10:34:56+08:00",
            "user_received_account": "招商银行信用卡0403",
            "amount": {"total": 500, "refund": 200, "payer_total": 500, "payer_refund": 200}
        })
    }

    fn verify(
        body: &[u8],
        headers: &http::HeaderMap,
    ) -> Result<Option<ProviderEvent>, WebhookError> {
        provider().verify_notification(headers, body, NOW)
    }

    fn platform_signed(body: &[u8]) -> http::HeaderMap {
        signed_headers(&test_keys().platform_pem, PUB_KEY_ID, NOW - 10, body)
    }

    #[test]
    fn a_signed_transaction_success_is_a_succeeded_event() {
        // Arrange
        let body = envelope("TRANSACTION.SUCCESS", &transaction("SUCCESS"), API_V3_KEY);
        // Act
        let event = verify(&body, &platform_signed(&body)).unwrap().unwrap();
        // Assert
        assert_eq!(event.provider, Provider::WechatPay);
        assert_eq!(event.key, "txn:1217752501201407033233368018");
        assert_eq!(
            event.topup,
            TopUpLocator::Id(TopUpId::parse(TOPUP).unwrap())
        );
        assert_eq!(
            event.kind,
            ProviderEventKind::Succeeded {
                amount: Amount::new(500).unwrap(),
                currency: Currency::parse("CNY").unwrap(),
                transaction_id: "1217752501201407033233368018".into(),
            }
        );
        assert_eq!(event.now, NOW);
    }

    #[test]
    fn a_notification_signed_with_a_platform_certificate_verifies() {
        let k = test_keys();
        let body = envelope("TRANSACTION.SUCCESS", &transaction("SUCCESS"), API_V3_KEY);
        let headers = signed_headers(&k.cert_key_pem, &k.cert_serial, NOW, &body);
        assert!(verify(&body, &headers).unwrap().is_some());
    }

    #[test]
    fn a_signed_refund_success_is_a_refunded_event() {
        let body = envelope("REFUND.SUCCESS", &refund("SUCCESS", REFUND), API_V3_KEY);
        let event = verify(&body, &platform_signed(&body)).unwrap().unwrap();
        assert_eq!(event.key, "refund:50000000382019052709732678859");
        assert_eq!(
            event.kind,
            ProviderEventKind::Refunded {
                refund: Some(TopUpRefundId::parse(REFUND).unwrap()),
                amount: Amount::new(200).unwrap(),
            }
        );
    }

    #[test]
    fn a_refund_made_outside_blepay_is_refunded_with_no_refund_id() {
        let body = envelope(
            "REFUND.SUCCESS",
            &refund("SUCCESS", "merchant-portal-1"),
            API_V3_KEY,
        );
        let event = verify(&body, &platform_signed(&body)).unwrap().unwrap();
        assert!(matches!(
            event.kind,
            ProviderEventKind::Refunded { refund: None, .. }
        ));
    }

    #[test]
    fn an_abnormal_or_closed_refund_of_ours_fails_it() {
        for (event_type, status) in [("REFUND.ABNORMAL", "ABNORMAL"), ("REFUND.CLOSED", "CLOSED")] {
            let body = envelope(event_type, &refund(status, REFUND), API_V3_KEY);
            let event = verify(&body, &platform_signed(&body)).unwrap().unwrap();
            assert_eq!(
                event.key,
                format!("refund:50000000382019052709732678859:{status}")
            );
            assert_eq!(
                event.kind,
                ProviderEventKind::RefundFailed {
                    refund: TopUpRefundId::parse(REFUND).unwrap(),
                    reason: format!("WeChat Pay refund {status}"),
                }
            );
            // Not ours: nothing to give back.
            let body = envelope(event_type, &refund(status, "portal-2"), API_V3_KEY);
            assert_eq!(verify(&body, &platform_signed(&body)), Ok(None));
        }
    }

    #[test]
    fn ignored_events_and_foreign_orders_are_none() {
        let body = envelope("TRANSACTION.SUCCESS", &transaction("NOTPAY"), API_V3_KEY);
        assert_eq!(verify(&body, &platform_signed(&body)), Ok(None));
        let body = envelope("TRANSACTION.CLOSED", &transaction("CLOSED"), API_V3_KEY);
        assert_eq!(verify(&body, &platform_signed(&body)), Ok(None));
        let mut t = transaction("SUCCESS");
        t["out_trade_no"] = "20150806125346".into();
        let body = envelope("TRANSACTION.SUCCESS", &t, API_V3_KEY);
        assert_eq!(verify(&body, &platform_signed(&body)), Ok(None));
    }

    #[test]
    fn another_merchants_transaction_is_malformed() {
        let mut t = transaction("SUCCESS");
        t["mchid"] = "1230000109".into();
        let body = envelope("TRANSACTION.SUCCESS", &t, API_V3_KEY);
        assert!(matches!(
            verify(&body, &platform_signed(&body)),
            Err(WebhookError::Malformed(_))
        ));
    }

    #[test]
    fn a_signature_by_another_key_does_not_verify() {
        let body = envelope("TRANSACTION.SUCCESS", &transaction("SUCCESS"), API_V3_KEY);
        // Signed with the merchant's key, naming the platform key.
        let headers = signed_headers(&test_keys().merchant_pem, PUB_KEY_ID, NOW, &body);
        assert_eq!(verify(&body, &headers), Err(WebhookError::BadSignature));
        // WeChat Pay's signature probe.
        let mut headers = platform_signed(&body);
        headers.insert(H_SIGNATURE, "WECHATPAY/SIGNTEST/abc".parse().unwrap());
        assert_eq!(verify(&body, &headers), Err(WebhookError::BadSignature));
    }

    #[test]
    fn a_tampered_body_does_not_verify() {
        let body = envelope("TRANSACTION.SUCCESS", &transaction("SUCCESS"), API_V3_KEY);
        let headers = platform_signed(&body);
        let mut tampered = body.clone();
        tampered.push(b' ');
        assert_eq!(verify(&tampered, &headers), Err(WebhookError::BadSignature));
    }

    #[test]
    fn a_certificate_serial_matches_in_either_case() {
        let k = test_keys();
        let body = envelope("TRANSACTION.SUCCESS", &transaction("SUCCESS"), API_V3_KEY);
        let serial = k.cert_serial.to_ascii_lowercase();
        let headers = signed_headers(&k.cert_key_pem, &serial, NOW, &body);
        assert!(verify(&body, &headers).unwrap().is_some());
    }

    #[test]
    fn an_unknown_serial_is_unknown_certificate() {
        let body = envelope("TRANSACTION.SUCCESS", &transaction("SUCCESS"), API_V3_KEY);
        let headers = signed_headers(&test_keys().platform_pem, "PUB_KEY_ID_OTHER", NOW, &body);
        assert_eq!(
            verify(&body, &headers),
            Err(WebhookError::UnknownCertificate)
        );
    }

    #[test]
    fn a_stale_timestamp_is_refused_either_way() {
        let body = envelope("TRANSACTION.SUCCESS", &transaction("SUCCESS"), API_V3_KEY);
        let pem = &test_keys().platform_pem;
        for ts in [NOW - 301, NOW + 301] {
            let headers = signed_headers(pem, PUB_KEY_ID, ts, &body);
            assert_eq!(verify(&body, &headers), Err(WebhookError::StaleTimestamp));
        }
        let headers = signed_headers(pem, PUB_KEY_ID, NOW - 300, &body);
        assert!(verify(&body, &headers).is_ok());
    }

    #[test]
    fn missing_headers_are_missing_signature() {
        let body = envelope("TRANSACTION.SUCCESS", &transaction("SUCCESS"), API_V3_KEY);
        for name in [H_TIMESTAMP, H_NONCE, H_SIGNATURE, H_SERIAL] {
            let mut headers = platform_signed(&body);
            headers.remove(name);
            assert_eq!(
                verify(&body, &headers),
                Err(WebhookError::MissingSignature),
                "{name}"
            );
        }
        let mut headers = platform_signed(&body);
        headers.insert(H_TIMESTAMP, "soon".parse().unwrap());
        assert_eq!(verify(&body, &headers), Err(WebhookError::MissingSignature));
    }

    /// A resource that does not decrypt under a verified signature is Malformed: the sender is
    /// authentic, so it is our API v3 key (configuration) or WeChat Pay's fault, which no
    /// signature check could tell apart and no retry fixes.
    #[test]
    fn a_resource_under_another_api_v3_key_or_tampered_is_malformed() {
        let body = envelope(
            "TRANSACTION.SUCCESS",
            &transaction("SUCCESS"),
            "vutsrqponmlkjihgfedcba9876543210",
        );
        assert!(matches!(
            verify(&body, &platform_signed(&body)),
            Err(WebhookError::Malformed(_))
        ));

        let body = envelope("TRANSACTION.SUCCESS", &transaction("SUCCESS"), API_V3_KEY);
        let mut v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        v["resource"]["associated_data"] = "certificate".into();
        let body = v.to_string().into_bytes();
        assert!(matches!(
            verify(&body, &platform_signed(&body)),
            Err(WebhookError::Malformed(_))
        ));
    }

    #[test]
    fn the_notify_answers_are_200_empty_or_a_fail_json() {
        assert_eq!(super::super::ack(), (http::StatusCode::OK, Vec::new()));
        let (status, body) = super::super::nack(http::StatusCode::BAD_REQUEST, "签名错误");
        assert_eq!(status, http::StatusCode::BAD_REQUEST);
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
            serde_json::json!({"code": "FAIL", "message": "签名错误"})
        );
    }

    type Edit = Box<dyn Fn(&mut WechatPaySettings)>;

    #[test]
    fn bad_settings_name_the_setting() {
        let out = Outbound::new(std::time::Duration::from_secs(1)).unwrap();
        let k = test_keys();
        let cases: Vec<(&str, Edit)> = vec![
            (
                "api_v3_key",
                Box::new(|s| s.api_v3_key = SecretString::new("short".into())),
            ),
            (
                "merchant_private_key_pem",
                Box::new(|s| s.merchant_private_key_pem = SecretString::new("nope".into())),
            ),
            (
                "platform_keys",
                Box::new(|s| s.platform_keys = vec![("X".into(), "junk".into())]),
            ),
            (
                "platform_keys",
                Box::new(move |s| s.platform_keys = vec![("ABCD".into(), k.cert_pem.clone())]),
            ),
            ("platform_keys", Box::new(|s| s.platform_keys.clear())),
            (
                "api_base",
                Box::new(|s| s.api_base = "http://api.mch.weixin.qq.com".into()),
            ),
        ];
        for (name, edit) in cases {
            let mut s = settings(super::super::DEFAULT_API_BASE);
            edit(&mut s);
            let err = WechatPay::new(s, out.clone()).unwrap_err();
            assert!(err.starts_with(name), "{err}");
            // Never the key material itself.
            assert!(!err.contains("MII"), "{err}");
        }
    }

    proptest! {
        #[test]
        fn random_headers_and_bodies_never_panic(
            ts in proptest::option::of("[0-9]{0,12}"),
            nonce in proptest::option::of("[ -~]{0,40}"),
            sig in proptest::option::of("[A-Za-z0-9+/=]{0,400}"),
            serial in proptest::option::of(prop_oneof![Just(PUB_KEY_ID.to_owned()), "[ -~]{0,40}"]),
            body in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let p = provider();
            let mut h = http::HeaderMap::new();
            for (name, v) in [(H_TIMESTAMP, ts), (H_NONCE, nonce), (H_SIGNATURE, sig), (H_SERIAL, serial)] {
                if let Some(v) = v.and_then(|v| http::HeaderValue::from_str(&v).ok()) {
                    h.insert(name, v);
                }
            }
            let _ = p.verify_notification(&h, &body, NOW);
        }

        #[test]
        fn random_header_bytes_never_panic(
            values in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 4),
        ) {
            let mut h = http::HeaderMap::new();
            for (name, v) in [H_TIMESTAMP, H_NONCE, H_SIGNATURE, H_SERIAL].into_iter().zip(values) {
                if let Ok(v) = http::HeaderValue::from_bytes(&v) {
                    h.insert(name, v);
                }
            }
            let body = br#"{"event_type":"TRANSACTION.SUCCESS"}"#;
            prop_assert!(verify(body, &h).is_err());
        }

        #[test]
        fn random_signed_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = verify(&body, &platform_signed(&body));
        }

        #[test]
        fn random_decrypted_resources_never_panic(
            plain in proptest::collection::vec(any::<u8>(), 0..256),
            refund in any::<bool>(),
        ) {
            let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, API_V3_KEY.as_bytes()).unwrap());
            let mut buf = plain;
            key.seal_in_place_append_tag(
                Nonce::try_assume_unique_for_key(b"fdasflkja484").unwrap(),
                Aad::from(b"transaction"),
                &mut buf,
            ).unwrap();
            let event = if refund { "REFUND.SUCCESS" } else { "TRANSACTION.SUCCESS" };
            let body = serde_json::json!({"event_type": event, "resource": {
                "algorithm": "AEAD_AES_256_GCM", "ciphertext": B64.encode(&buf),
                "associated_data": "transaction", "nonce": "fdasflkja484"}}).to_string().into_bytes();
            prop_assert!(matches!(verify(&body, &platform_signed(&body)), Err(WebhookError::Malformed(_))));
        }
    }
}
