//! Which providers a deployment offers, and with which secrets and limits.
//!
//! Each provider is configured by one JSON document (docs/topups.md "Connecting a provider"),
//! the same on both deployments: `blepay serve` reads it from a file (`BLEPAY_STRIPE_FILE`,
//! `BLEPAY_WECHATPAY_FILE`, mode 0600) or a variable (`BLEPAY_STRIPE`, `BLEPAY_WECHATPAY`); the
//! Lambda functions from a Secrets Manager secret (`BLEPAY_STRIPE_SECRET_ID`,
//! `BLEPAY_WECHATPAY_SECRET_ID`). A provider without a document is not offered
//! (`400 PROVIDER_UNAVAILABLE`). The documents are held in [`SecretString`]s, parsed once at
//! start, and never logged: a parse error names the variable and the field, not the value.

use std::fmt;
use std::sync::Arc;

use blepay_core::{Amount, Provider};
use serde::Deserialize;
use zeroize::Zeroizing;

use super::http::{DEFAULT_ATTEMPT_TIMEOUT, Outbound};
use super::stripe::{self, StripeClient, StripeSettings};
use super::wechatpay::{self, WechatPay, WechatPaySettings};
use crate::config::{ConfigError, SecretString, cfg_err};

/// `BLEPAY_TOPUP_MIN` when unset: 1.00 in a currency with cents (also Stripe's minimum charge
/// is about 0.50 USD).
pub const DEFAULT_TOPUP_MIN: i64 = 100;
/// `BLEPAY_TOPUP_MAX` when unset: 500.00.
pub const DEFAULT_TOPUP_MAX: i64 = 50_000;
/// `BLEPAY_WALLET_MAX` when unset: a wallet's available plus held balance may not pass 1000.00
/// through a provider top-up (a prepaid wallet is not a bank account).
pub const DEFAULT_WALLET_MAX: i64 = 100_000;

/// What the front ends read, unchecked: the providers' JSON documents and the limits.
#[derive(Debug, Clone)]
pub struct ProviderSettings {
    /// The Stripe document (`BLEPAY_STRIPE`).
    pub stripe: Option<SecretString>,
    /// The WeChat Pay document (`BLEPAY_WECHATPAY`).
    pub wechatpay: Option<SecretString>,
    /// `BLEPAY_TOPUP_MIN`, `BLEPAY_TOPUP_MAX`: one top-up's bounds, minor units.
    pub topup_min: i64,
    pub topup_max: i64,
    /// `BLEPAY_WALLET_MAX`: the most a wallet's available plus held balance may reach by a top-up.
    pub wallet_max: i64,
}

impl Default for ProviderSettings {
    fn default() -> Self {
        Self {
            stripe: None,
            wechatpay: None,
            topup_min: DEFAULT_TOPUP_MIN,
            topup_max: DEFAULT_TOPUP_MAX,
            wallet_max: DEFAULT_WALLET_MAX,
        }
    }
}

/// One top-up's bounds and the wallet maximum, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopUpLimits {
    pub min: Amount,
    pub max: Amount,
    pub wallet_max: Amount,
}

/// The configured providers' clients (shared, cheap to clone) and the limits.
#[derive(Clone)]
pub struct Providers {
    pub stripe: Option<Arc<StripeProvider>>,
    pub wechatpay: Option<Arc<WechatPay>>,
    pub limits: TopUpLimits,
}

/// Stripe's outbound client and its webhook secrets.
pub struct StripeProvider {
    pub client: StripeClient,
    pub webhook_secrets: Vec<SecretString>,
}

impl fmt::Debug for StripeProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StripeProvider")
            .field("webhook_secrets", &self.webhook_secrets.len())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Providers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Providers")
            .field("stripe", &self.stripe.is_some())
            .field("wechatpay", &self.wechatpay.is_some())
            .field("limits", &self.limits)
            .finish()
    }
}

impl Providers {
    /// No provider (the default of a deployment that configured none).
    pub fn none() -> Self {
        Self {
            stripe: None,
            wechatpay: None,
            limits: TopUpLimits {
                min: Amount::new(DEFAULT_TOPUP_MIN).unwrap_or(Amount::ZERO),
                max: Amount::new(DEFAULT_TOPUP_MAX).unwrap_or(Amount::ZERO),
                wallet_max: Amount::new(DEFAULT_WALLET_MAX).unwrap_or(Amount::ZERO),
            },
        }
    }

    /// Whether `p` is offered.
    pub fn offers(&self, p: Provider) -> bool {
        match p {
            Provider::Stripe => self.stripe.is_some(),
            Provider::WechatPay => self.wechatpay.is_some(),
        }
    }
}

impl ProviderSettings {
    /// Read the documents and limits through `get` (a variable's value) and `read_file` (a
    /// `*_FILE` path's content): `BLEPAY_STRIPE_FILE` before `BLEPAY_STRIPE`, and so on.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the variable: an unreadable file, a limit that is not a number.
    pub fn from_env(
        get: &dyn Fn(&str) -> Option<String>,
        read_file: &dyn Fn(&str, &'static str) -> Result<SecretString, ConfigError>,
    ) -> Result<Self, ConfigError> {
        let doc = |var: &'static str, file_var: &'static str| match get(file_var) {
            Some(path) if !path.trim().is_empty() => read_file(&path, file_var).map(Some),
            _ => Ok(get(var)
                .filter(|v| !v.trim().is_empty())
                .map(SecretString::new)),
        };
        let number = |var: &'static str, default: i64| match get(var) {
            None => Ok(default),
            Some(v) => v
                .trim()
                .parse::<i64>()
                .map_err(|_| cfg_err(var, "must be an integer number of minor units")),
        };
        Ok(Self {
            stripe: doc("BLEPAY_STRIPE", "BLEPAY_STRIPE_FILE")?,
            wechatpay: doc("BLEPAY_WECHATPAY", "BLEPAY_WECHATPAY_FILE")?,
            topup_min: number("BLEPAY_TOPUP_MIN", DEFAULT_TOPUP_MIN)?,
            topup_max: number("BLEPAY_TOPUP_MAX", DEFAULT_TOPUP_MAX)?,
            wallet_max: number("BLEPAY_WALLET_MAX", DEFAULT_WALLET_MAX)?,
        })
    }

    /// Check the limits, parse the documents and build the clients.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the variable and the field at fault (never the secret).
    pub fn build(&self) -> Result<Providers, ConfigError> {
        let amount = |var: &'static str, v: i64| {
            Amount::positive(v).map_err(|_| {
                cfg_err(
                    var,
                    format!("must be 1..={} minor units", Amount::MAX.minor()),
                )
            })
        };
        let limits = TopUpLimits {
            min: amount("BLEPAY_TOPUP_MIN", self.topup_min)?,
            max: amount("BLEPAY_TOPUP_MAX", self.topup_max)?,
            wallet_max: amount("BLEPAY_WALLET_MAX", self.wallet_max)?,
        };
        if limits.min > limits.max {
            return Err(cfg_err(
                "BLEPAY_TOPUP_MIN",
                "must be at most BLEPAY_TOPUP_MAX",
            ));
        }
        if limits.max > limits.wallet_max {
            return Err(cfg_err(
                "BLEPAY_TOPUP_MAX",
                "must be at most BLEPAY_WALLET_MAX",
            ));
        }
        let outbound = || {
            Outbound::new(DEFAULT_ATTEMPT_TIMEOUT)
                .map_err(|e| cfg_err("BLEPAY_STRIPE", format!("outbound HTTPS client: {e}")))
        };
        let stripe = match &self.stripe {
            None => None,
            Some(doc) => {
                let s = parse_stripe(doc)?;
                let webhook_secrets = s.webhook_secrets.clone();
                Some(Arc::new(StripeProvider {
                    client: StripeClient::new(s, outbound()?),
                    webhook_secrets,
                }))
            }
        };
        let wechatpay = match &self.wechatpay {
            None => None,
            Some(doc) => {
                let s = parse_wechatpay(doc)?;
                Some(Arc::new(
                    WechatPay::new(s, outbound()?).map_err(|e| cfg_err("BLEPAY_WECHATPAY", e))?,
                ))
            }
        };
        Ok(Providers {
            stripe,
            wechatpay,
            limits,
        })
    }
}

fn json_error(var: &'static str, e: &serde_json::Error) -> ConfigError {
    // serde_json's message names the field and position, never the value.
    cfg_err(
        var,
        format!(
            "not the documented JSON document (line {}, column {}: {})",
            e.line(),
            e.column(),
            match e.classify() {
                serde_json::error::Category::Data => "a field is missing or has the wrong type",
                _ => "malformed JSON",
            }
        ),
    )
}

/// `{"secretKey": "sk_…", "webhookSecrets": ["whsec_…", …], "apiBase": "https://api.stripe.com"}`
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StripeDoc {
    secret_key: Zeroizing<String>,
    webhook_secrets: Vec<Zeroizing<String>>,
    #[serde(default)]
    api_base: Option<String>,
}

fn parse_stripe(doc: &SecretString) -> Result<StripeSettings, ConfigError> {
    const VAR: &str = "BLEPAY_STRIPE";
    let d: StripeDoc = serde_json::from_str(doc.expose()).map_err(|e| json_error(VAR, &e))?;
    if !(d.secret_key.starts_with("sk_") || d.secret_key.starts_with("rk_")) {
        return Err(cfg_err(
            VAR,
            "secretKey: must be a Stripe secret (sk_…) or restricted (rk_…) key",
        ));
    }
    if d.webhook_secrets.is_empty() || d.webhook_secrets.iter().any(|s| !s.starts_with("whsec_")) {
        return Err(cfg_err(
            VAR,
            "webhookSecrets: one or more endpoint signing secrets (whsec_…)",
        ));
    }
    Ok(StripeSettings {
        secret_key: SecretString::new(d.secret_key.to_string()),
        webhook_secrets: d
            .webhook_secrets
            .iter()
            .map(|s| SecretString::new(s.to_string()))
            .collect(),
        api_base: d
            .api_base
            .unwrap_or_else(|| stripe::DEFAULT_API_BASE.to_owned()),
    })
}

/// `{"mchid", "appid", "apiV3Key", "merchantPrivateKey" (PEM), "merchantSerial",
/// "platformKeys": [{"id", "pem"}], "notifyUrl", "apiBase"?}`
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WechatDoc {
    mchid: String,
    appid: String,
    api_v3_key: Zeroizing<String>,
    merchant_private_key: Zeroizing<String>,
    merchant_serial: String,
    platform_keys: Vec<PlatformKeyDoc>,
    notify_url: String,
    #[serde(default)]
    api_base: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlatformKeyDoc {
    id: String,
    pem: String,
}

fn parse_wechatpay(doc: &SecretString) -> Result<WechatPaySettings, ConfigError> {
    const VAR: &str = "BLEPAY_WECHATPAY";
    let d: WechatDoc = serde_json::from_str(doc.expose()).map_err(|e| json_error(VAR, &e))?;
    if d.api_v3_key.len() != 32 {
        return Err(cfg_err(
            VAR,
            "apiV3Key: must be the 32-character API v3 key",
        ));
    }
    if d.platform_keys.is_empty() {
        return Err(cfg_err(
            VAR,
            "platformKeys: at least one platform certificate or WeChat Pay public key",
        ));
    }
    if !d.notify_url.starts_with("https://") {
        return Err(cfg_err(
            VAR,
            "notifyUrl: must be the https:// URL of POST /v1/webhooks/wechatpay",
        ));
    }
    Ok(WechatPaySettings {
        mchid: d.mchid,
        appid: d.appid,
        api_v3_key: SecretString::new(d.api_v3_key.to_string()),
        merchant_private_key_pem: SecretString::new(d.merchant_private_key.to_string()),
        merchant_serial: d.merchant_serial,
        platform_keys: d.platform_keys.into_iter().map(|k| (k.id, k.pem)).collect(),
        notify_url: d.notify_url,
        api_base: d
            .api_base
            .unwrap_or_else(|| wechatpay::DEFAULT_API_BASE.to_owned()),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn stripe_doc(doc: &str) -> ProviderSettings {
        ProviderSettings {
            stripe: Some(SecretString::new(doc.to_owned())),
            ..ProviderSettings::default()
        }
    }

    #[test]
    fn nothing_configured_offers_nothing_and_limits_are_checked() {
        let p = ProviderSettings::default().build().unwrap();
        assert!(!p.offers(Provider::Stripe) && !p.offers(Provider::WechatPay));
        let bad = ProviderSettings {
            topup_min: 500,
            topup_max: 100,
            ..ProviderSettings::default()
        };
        assert_eq!(bad.build().unwrap_err().var, "BLEPAY_TOPUP_MIN");
        let bad = ProviderSettings {
            wallet_max: 0,
            ..ProviderSettings::default()
        };
        assert_eq!(bad.build().unwrap_err().var, "BLEPAY_WALLET_MAX");
    }

    #[test]
    fn a_stripe_document_parses_and_its_errors_never_show_the_secret() {
        let ok =
            stripe_doc(r#"{"secretKey":"sk_test_abc","webhookSecrets":["whsec_1","whsec_2"]}"#);
        let p = ok.build().unwrap();
        let s = p.stripe.unwrap();
        assert_eq!(s.webhook_secrets.len(), 2);
        for doc in [
            r#"{"secretKey":"pk_test_sekrit","webhookSecrets":["whsec_1"]}"#,
            r#"{"secretKey":"sk_test_sekrit","webhookSecrets":[]}"#,
            r#"{"secretKey":"sk_test_sekrit","webhookSecrets":["whsec_1"],"other":1}"#,
            r#"{"secretKey":"sk_test_sekrit""#,
        ] {
            let e = stripe_doc(doc).build().unwrap_err();
            assert_eq!(e.var, "BLEPAY_STRIPE");
            assert!(!e.to_string().contains("sekrit"), "{e}");
        }
    }
}
