//! WeChat Pay API v3. LEAD STUB — replaced by helper w's module on merge.
#![allow(
    clippy::unused_async,
    missing_docs,
    unused_variables,
    dead_code,
    missing_debug_implementations
)]

use crate::config::SecretString;
use crate::providers::{ProviderError, RefundAnswer, WebhookError, http::Outbound};
use blepay_store::{ProviderEvent, ProviderTopUp, TopUpRefund};

pub const DEFAULT_API_BASE: &str = "https://api.mch.weixin.qq.com";
pub const TIMESTAMP_TOLERANCE_SECS: u64 = 300;

#[derive(Clone, Debug)]
pub struct WechatPaySettings {
    pub mchid: String,
    pub appid: String,
    pub api_v3_key: SecretString,
    pub merchant_private_key_pem: SecretString,
    pub merchant_serial: String,
    pub platform_keys: Vec<(String, String)>,
    pub notify_url: String,
    pub api_base: String,
}

pub struct WechatPay {
    settings: WechatPaySettings,
    outbound: Outbound,
}

pub struct WechatOrder {
    pub prepay_id: String,
    pub client: serde_json::Value,
}

impl WechatPay {
    pub fn new(settings: WechatPaySettings, outbound: Outbound) -> Result<Self, String> {
        Ok(Self { settings, outbound })
    }
    pub fn verify_notification(
        &self,
        headers: &http::HeaderMap,
        body: &[u8],
        now: u64,
    ) -> Result<Option<ProviderEvent>, WebhookError> {
        Err(WebhookError::BadSignature)
    }
    pub async fn create_order(
        &self,
        topup: &ProviderTopUp,
        description: &str,
        openid: Option<&str>,
    ) -> Result<WechatOrder, ProviderError> {
        Err(ProviderError::Unreachable("stub".into()))
    }
    pub fn client_params(
        &self,
        prepay_id: &str,
        jsapi: bool,
        now: u64,
    ) -> Result<serde_json::Value, ProviderError> {
        Err(ProviderError::Unreachable("stub".into()))
    }
    pub async fn refund(
        &self,
        topup: &ProviderTopUp,
        refund: &TopUpRefund,
    ) -> Result<RefundAnswer, ProviderError> {
        Err(ProviderError::Unreachable("stub".into()))
    }
}

pub fn ack() -> (http::StatusCode, Vec<u8>) {
    (http::StatusCode::OK, Vec::new())
}

pub fn nack(status: http::StatusCode, message: &str) -> (http::StatusCode, Vec<u8>) {
    (status, Vec::new())
}
