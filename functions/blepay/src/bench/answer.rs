//! What the bench reads of a machine answer ([`blepay_device_client::Answer`], opened by the
//! machine's `Identity`). This is the only place the bench looks inside one: a change of the
//! device client's answer types is adapted here.

use blepay_core::SessionId;
use blepay_device_client::Answer;
use serde_json::{Value, json};

/// The refusal code, when the server refused the request.
pub(super) fn refusal(answer: &Answer) -> Option<&'static str> {
    answer
        .refusal_code()
        .map(blepay_device_client::RefusalCode::as_str)
}

/// Whether an answer brought the grant of `session` (a press answer: started it).
pub(super) fn grants(answer: &Answer, session: SessionId) -> bool {
    answer.body.usable_grants().any(|g| g.session == session)
}

/// The answer's fields as JSON (the API's proto3 JSON mapping), with the frame's header
/// fields (`seq`, `serverTime`) and a tag, as a JSON design would carry them.
///
/// # Errors
/// When the answer does not serialize (it always does).
pub(super) fn as_json(answer: &Answer, seq: u32, tag: &str) -> serde_json::Result<Value> {
    let mut v = serde_json::to_value(answer.body.to_pb())?;
    if let Value::Object(m) = &mut v {
        m.insert("seq".into(), json!(seq));
        m.insert("serverTime".into(), json!(answer.server_time.to_string()));
        m.insert("tag".into(), json!(tag));
    }
    Ok(v)
}
