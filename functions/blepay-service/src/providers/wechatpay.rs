//! WeChat Pay API v3: the notify endpoint (RSA-SHA256 signature, AES-256-GCM resource) and the
//! outbound client (App/JSAPI orders, refunds).
