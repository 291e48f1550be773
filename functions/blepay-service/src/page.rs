//! Cursor pagination for every list route: `?limit=N&cursor=C`, answered with the items and a
//! `nextCursor` (empty on the last page). A cursor is the [`ListPosition`] of the last item
//! returned, base64url (no padding) of `<at>.<id>`: opaque to clients, meaningful only to the
//! list that issued it, and decoded with a stable INVALID_ARGUMENT for anything else.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use blepay_store::{ListPosition, PageRequest};

use crate::error::ApiError;

/// The longest cursor accepted (a position's id is at most a few dozen bytes).
pub const MAX_CURSOR_LEN: usize = 256;

/// Encode where the next page starts.
pub fn encode_cursor(p: &ListPosition) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}.{}", p.at, p.id))
}

/// Decode a cursor this server issued.
///
/// # Errors
/// INVALID_ARGUMENT "cursor: …" for anything that is not one.
pub fn decode_cursor(s: &str) -> Result<ListPosition, ApiError> {
    let bad = || ApiError::invalid("cursor: not a cursor this list issued");
    if s.len() > MAX_CURSOR_LEN {
        return Err(bad());
    }
    let bytes = URL_SAFE_NO_PAD.decode(s).map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let (at, id) = text.split_once('.').ok_or_else(bad)?;
    if at.is_empty() || !at.bytes().all(|b| b.is_ascii_digit()) || id.is_empty() {
        return Err(bad());
    }
    let at = at.parse::<u64>().map_err(|_| bad())?;
    if id.chars().any(char::is_control) {
        return Err(bad());
    }
    Ok(ListPosition {
        at,
        id: id.to_owned(),
    })
}

/// The page a list request asks for: `limit` (1..=[`PageRequest::MAX_LIMIT`], default
/// [`PageRequest::DEFAULT_LIMIT`]) and an optional `cursor` (empty = from the start).
///
/// # Errors
/// INVALID_ARGUMENT naming `limit` or `cursor`.
pub fn page_request(limit: Option<u32>, cursor: Option<&str>) -> Result<PageRequest, ApiError> {
    let limit = match limit {
        None => PageRequest::DEFAULT_LIMIT,
        Some(n) if (1..=PageRequest::MAX_LIMIT).contains(&n) => n,
        Some(_) => {
            return Err(ApiError::invalid(format!(
                "limit: must be 1..={}",
                PageRequest::MAX_LIMIT
            )));
        }
    };
    let after = match cursor {
        None | Some("") => None,
        Some(c) => Some(decode_cursor(c)?),
    };
    Ok(PageRequest { limit, after })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_cursor_round_trips() {
        let p = ListPosition {
            at: 1_700_000_000,
            id: "0011223344556677.abc".into(),
        };
        assert_eq!(decode_cursor(&encode_cursor(&p)), Ok(p));
    }

    #[test]
    fn limits_outside_the_range_are_refused() {
        assert!(page_request(Some(0), None).is_err());
        assert!(page_request(Some(PageRequest::MAX_LIMIT + 1), None).is_err());
        assert_eq!(
            page_request(None, Some("")).map(|p| p.limit),
            Ok(PageRequest::DEFAULT_LIMIT)
        );
    }

    proptest! {
        #[test]
        fn any_string_decodes_to_a_position_or_a_clear_error(s in ".{0,300}") {
            match decode_cursor(&s) {
                Ok(p) => prop_assert_eq!(decode_cursor(&encode_cursor(&p)), Ok(p)),
                Err(e) => prop_assert!(e.message.starts_with("cursor:")),
            }
        }

        #[test]
        fn any_position_round_trips(at in any::<u64>(), id in "[a-zA-Z0-9._:-]{1,60}") {
            let p = ListPosition { at, id };
            prop_assert_eq!(decode_cursor(&encode_cursor(&p)), Ok(p));
        }
    }
}
