//! WeChat Pay's keys and signature strings, parsed once at start.
//!
//! - Requests and the app's payment parameters are signed with the merchant's RSA key
//!   (SHA256 with RSA, PKCS#1 v1.5, base64): "签名生成", "APP调起支付", "JSAPI调起支付".
//! - Answers and notifications are verified with the platform key the `Wechatpay-Serial`
//!   header names: a platform certificate's serial or a "WeChat Pay public key" id
//!   (`PUB_KEY_ID_…`), over `"timestamp\nnonce\nbody\n"` ("签名验证").
//! - Notification resources are `AEAD_AES_256_GCM` with the API v3 key: base64 ciphertext with
//!   the 16-byte tag appended, a 12-byte `nonce`, `associated_data` ("证书和回调报文解密").

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{
    RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_SHA256, RsaKeyPair, UnparsedPublicKey,
};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use super::{SIGNATURE_SCHEME, TIMESTAMP_TOLERANCE_SECS, WechatPaySettings};
use crate::providers::WebhookError;

/// The request signature string: `"METHOD\nURL-path-and-query\ntimestamp\nnonce\nbody\n"`
/// (an empty body for GET still ends in `\n`).
pub fn request_sign_message(
    method: &str,
    path_and_query: &str,
    timestamp: u64,
    nonce: &str,
    body: &[u8],
) -> Vec<u8> {
    let mut m = format!("{method}\n{path_and_query}\n{timestamp}\n{nonce}\n").into_bytes();
    m.extend_from_slice(body);
    m.push(b'\n');
    m
}

/// The answer / notification verification string: `"timestamp\nnonce\nbody\n"`.
pub fn verify_sign_message(timestamp: &str, nonce: &str, body: &[u8]) -> Vec<u8> {
    let mut m = format!("{timestamp}\n{nonce}\n").into_bytes();
    m.extend_from_slice(body);
    m.push(b'\n');
    m
}

/// "APP调起支付": `"appid\ntimestamp\nnoncestr\nprepayid\n"`.
pub fn app_sign_message(appid: &str, timestamp: &str, nonce: &str, prepay_id: &str) -> Vec<u8> {
    format!("{appid}\n{timestamp}\n{nonce}\n{prepay_id}\n").into_bytes()
}

/// "JSAPI调起支付": `"appId\ntimeStamp\nnonceStr\npackage\n"` with package `prepay_id=…`.
pub fn jsapi_sign_message(appid: &str, timestamp: &str, nonce: &str, package: &str) -> Vec<u8> {
    format!("{appid}\n{timestamp}\n{nonce}\n{package}\n").into_bytes()
}

/// The header names WeChat Pay signs answers and notifications with.
pub const H_TIMESTAMP: &str = "wechatpay-timestamp";
pub const H_NONCE: &str = "wechatpay-nonce";
pub const H_SIGNATURE: &str = "wechatpay-signature";
pub const H_SERIAL: &str = "wechatpay-serial";
pub const H_SIGNATURE_TYPE: &str = "wechatpay-signature-type";

/// Why signed headers did not verify (mapped to [`WebhookError`] or a bad answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyError {
    Missing,
    UnknownSerial,
    Bad,
    Stale,
}

impl From<VerifyError> for WebhookError {
    fn from(e: VerifyError) -> Self {
        match e {
            VerifyError::Missing => Self::MissingSignature,
            VerifyError::UnknownSerial => Self::UnknownCertificate,
            VerifyError::Bad => Self::BadSignature,
            VerifyError::Stale => Self::StaleTimestamp,
        }
    }
}

impl std::fmt::Display for VerifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Missing => "missing or malformed Wechatpay-* signature headers",
            Self::UnknownSerial => "unknown Wechatpay-Serial",
            Self::Bad => "signature does not verify",
            Self::Stale => "Wechatpay-Timestamp outside the tolerance",
        })
    }
}

/// The parsed keys. No `Debug`: nothing here is ever printed.
pub struct Keys {
    merchant: RsaKeyPair,
    /// (serial or public key id, PKCS#1 RSAPublicKey DER).
    platform: Vec<(String, UnparsedPublicKey<Vec<u8>>)>,
    api_v3: LessSafeKey,
    rng: SystemRandom,
}

impl Keys {
    /// # Errors
    /// A message naming the setting that does not parse (never its value).
    pub fn new(s: &WechatPaySettings) -> Result<Self, String> {
        let pkcs8 = PrivatePkcs8KeyDer::from_pem_slice(s.merchant_private_key_pem.expose().as_bytes())
            .map_err(|_| "merchant_private_key_pem: not a PKCS#8 PEM private key (\"-----BEGIN PRIVATE KEY-----\")".to_owned())?;
        let merchant = RsaKeyPair::from_pkcs8(pkcs8.secret_pkcs8_der())
            .map_err(|_| "merchant_private_key_pem: not a valid RSA private key".to_owned())?;
        if merchant.public_modulus_len() < 256 {
            return Err("merchant_private_key_pem: RSA key shorter than 2048 bits".to_owned());
        }
        let key = s.api_v3_key.expose().as_bytes();
        if key.len() != 32 {
            return Err("api_v3_key: must be 32 bytes".to_owned());
        }
        let api_v3 = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, key).map_err(|_| "api_v3_key: unusable".to_owned())?,
        );
        if s.platform_keys.is_empty() {
            return Err(
                "platform_keys: at least one platform certificate or public key".to_owned(),
            );
        }
        let mut platform = Vec::with_capacity(s.platform_keys.len());
        for (serial, pem) in &s.platform_keys {
            if serial.is_empty() || !serial.is_ascii() {
                return Err("platform_keys: a key's serial / id must be non-empty ASCII".to_owned());
            }
            let der = platform_public_key(serial, pem)
                .map_err(|e| format!("platform_keys[{serial}]: {e}"))?;
            platform.push((
                serial.clone(),
                UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, der),
            ));
        }
        Ok(Self {
            merchant,
            platform,
            api_v3,
            rng: SystemRandom::new(),
        })
    }

    /// SHA256 with RSA over `message` with the merchant key, base64.
    ///
    /// # Errors
    /// Only if aws-lc-rs fails (it does not with a parsed key).
    pub fn sign(&self, message: &[u8]) -> Result<String, ()> {
        let mut sig = vec![0u8; self.merchant.public_modulus_len()];
        self.merchant
            .sign(&RSA_PKCS1_SHA256, &self.rng, message, &mut sig)
            .map_err(|_| ())?;
        Ok(B64.encode(sig))
    }

    /// 32 random characters (uppercase hex): a request's `nonce_str`, the app's `noncestr`.
    pub fn nonce(&self) -> String {
        let mut b = [0u8; 16];
        // SystemRandom does not fail on supported platforms; a failure would leave zeros, which
        // only weakens a nonce WeChat Pay uses against replays within its own window.
        let _ = self.rng.fill(&mut b);
        hex::encode_upper(b)
    }

    /// Verify the `Wechatpay-*` headers over `body` at `now`.
    ///
    /// # Errors
    /// [`VerifyError`]: a header missing or not parsing, an unknown serial, a signature that
    /// does not verify, a timestamp more than [`TIMESTAMP_TOLERANCE_SECS`] from `now`.
    pub fn verify_signed(
        &self,
        headers: &http::HeaderMap,
        body: &[u8],
        now: u64,
    ) -> Result<(), VerifyError> {
        let header = |name: &str| -> Result<&str, VerifyError> {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .ok_or(VerifyError::Missing)
        };
        let timestamp = header(H_TIMESTAMP)?;
        let nonce = header(H_NONCE)?;
        let signature = header(H_SIGNATURE)?;
        let serial = header(H_SERIAL)?;
        if let Some(t) = headers.get(H_SIGNATURE_TYPE)
            && t.as_bytes() != SIGNATURE_SCHEME.as_bytes()
        {
            return Err(VerifyError::Missing);
        }
        let ts: u64 = timestamp.parse().map_err(|_| VerifyError::Missing)?;
        let key = self
            .platform
            .iter()
            // Certificate serials are hex: either case names the same key.
            .find(|(s, _)| s.eq_ignore_ascii_case(serial))
            .map(|(_, k)| k)
            .ok_or(VerifyError::UnknownSerial)?;
        // A probe signature ("WECHATPAY/SIGNTEST/…") is not base64 and must fail: it does.
        let sig = B64.decode(signature).map_err(|_| VerifyError::Bad)?;
        key.verify(&verify_sign_message(timestamp, nonce, body), &sig)
            .map_err(|_| VerifyError::Bad)?;
        if ts.abs_diff(now) > TIMESTAMP_TOLERANCE_SECS {
            return Err(VerifyError::Stale);
        }
        Ok(())
    }

    /// Decrypt an `AEAD_AES_256_GCM` resource with the API v3 key.
    ///
    /// # Errors
    /// A description when the ciphertext is not base64, the nonce is not 12 bytes or the tag
    /// does not verify (wrong key, tampered ciphertext or associated data).
    pub fn decrypt(
        &self,
        nonce: &str,
        associated_data: &str,
        ciphertext_b64: &str,
    ) -> Result<Vec<u8>, String> {
        let mut buf = B64
            .decode(ciphertext_b64)
            .map_err(|_| "resource.ciphertext is not base64".to_owned())?;
        let nonce = Nonce::try_assume_unique_for_key(nonce.as_bytes())
            .map_err(|_| "resource.nonce is not 12 bytes".to_owned())?;
        let plain = self
            .api_v3
            .open_in_place(nonce, Aad::from(associated_data.as_bytes()), &mut buf)
            .map_err(|_| "resource does not decrypt with the API v3 key".to_owned())?;
        Ok(plain.to_vec())
    }
}

/// A platform key's PKCS#1 RSAPublicKey DER, from an X.509 certificate PEM (its serial must be
/// `serial`, hex, either case) or an SPKI public key PEM.
fn platform_public_key(serial: &str, pem: &str) -> Result<Vec<u8>, String> {
    if let Ok(cert) = CertificateDer::from_pem_slice(pem.as_bytes()) {
        let (_, x) = x509_parser::parse_x509_certificate(&cert)
            .map_err(|_| "not a valid X.509 certificate".to_owned())?;
        let cert_serial = hex::encode_upper(x.raw_serial());
        let wanted = serial.to_ascii_uppercase();
        if cert_serial.trim_start_matches("00") != wanted.trim_start_matches("00") {
            return Err(format!("the certificate's serial is {cert_serial}"));
        }
        return rsa_key(x.public_key());
    }
    let spki = SubjectPublicKeyInfoDer::from_pem_slice(pem.as_bytes()).map_err(|_| {
        "neither a certificate nor a public key PEM (\"-----BEGIN PUBLIC KEY-----\")".to_owned()
    })?;
    let (_, info) = SubjectPublicKeyInfo::from_der(&spki)
        .map_err(|_| "not a valid SubjectPublicKeyInfo".to_owned())?;
    rsa_key(&info)
}

/// The SPKI's bit string (a PKCS#1 RSAPublicKey) when it is an RSA key of 2048..=8192 bits.
fn rsa_key(info: &SubjectPublicKeyInfo<'_>) -> Result<Vec<u8>, String> {
    match info.parsed() {
        Ok(PublicKey::RSA(rsa)) if (2048..=8192).contains(&rsa.key_size()) => {
            Ok(info.subject_public_key.data.to_vec())
        }
        Ok(PublicKey::RSA(_)) => Err("RSA key not 2048..=8192 bits".to_owned()),
        _ => Err("not an RSA public key".to_owned()),
    }
}
