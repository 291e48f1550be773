//! The values of the operator's back office that cross the [`crate::Store`] trait: refunds,
//! closing a session by hand, and the users' problem reports (issue 11, items 1–3).

use blepay_core::{Amount, IdempotencyKey, Session, SessionId, UserId, Wallet};

/// Why a free-text reason was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReasonError {
    #[error("must be 1..={max} characters without control characters")]
    Bad { max: usize },
}

/// Declares a 16-byte random id shown as 32 lowercase hex characters (`from_bytes`,
/// `as_bytes`, `parse` of either case, `Display`).
#[macro_export]
macro_rules! hex_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; 16]);

        impl $name {
            pub const fn from_bytes(b: [u8; 16]) -> Self {
                Self(b)
            }

            pub const fn as_bytes(&self) -> &[u8; 16] {
                &self.0
            }

            /// Parse 32 hex characters (either case).
            ///
            /// # Errors
            /// When `s` is not 32 hex characters.
            pub fn parse(s: &str) -> Result<Self, $crate::ReasonError> {
                let bad = $crate::ReasonError::Bad { max: 32 };
                if s.len() != 32 || !s.is_ascii() {
                    return Err(bad);
                }
                let mut out = [0u8; 16];
                for (i, byte) in out.iter_mut().enumerate() {
                    *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2).ok_or(bad)?, 16)
                        .map_err(|_| bad)?;
                }
                Ok(Self(out))
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                for b in self.0 {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }
    };
}

/// A free-text reason a user or an operator gives (a problem, a refund, a close): 1..=500
/// characters, not blank, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reason(String);

impl Reason {
    pub const MAX_LEN: usize = 500;

    /// # Errors
    /// [`ReasonError::Bad`] when blank, longer than [`Reason::MAX_LEN`] characters or holding
    /// a control character.
    pub fn parse(s: &str) -> Result<Self, ReasonError> {
        if s.trim().is_empty()
            || s.chars().count() > Self::MAX_LEN
            || s.chars().any(char::is_control)
        {
            return Err(ReasonError::Bad { max: Self::MAX_LEN });
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

crate::hex_id!(
    /// A problem report's id: 16 random bytes, shown as 32 lowercase hex characters.
    ProblemId
);

/// An operator's refund of part of a session's capture.
#[derive(Debug, Clone)]
pub struct RefundCommand {
    pub session: SessionId,
    pub amount: Amount,
    pub reason: Reason,
    /// Scoped per session: the same key on the same session is a retry whoever sends it.
    pub key: IdempotencyKey,
    /// Who refunds (the operator's principal), written on the ledger row.
    pub actor: String,
    pub now: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundOutcome {
    /// Refunded now: the session and its user's wallet after it.
    Refunded {
        session: Session,
        wallet: Wallet,
    },
    /// The same key on this session refunded the same amount before: nothing moves.
    Replayed {
        session: Session,
        wallet: Wallet,
    },
    /// The key was used on this session for another amount.
    KeyReused,
    /// The session's refunds would exceed what it captured; `refundable` is what is left.
    ExceedsCapture {
        refundable: Amount,
    },
    /// The session is not SETTLED (open, or expired: nothing was captured).
    NotSettled,
    SessionNotFound,
}

/// An operator closes a session by hand.
#[derive(Debug, Clone)]
pub struct CloseCommand {
    pub session: SessionId,
    pub reason: Reason,
    /// Who closes (the operator's principal), written on the ledger rows.
    pub actor: String,
    pub now: u64,
    /// An ACTIVE session past its report deadline is closed by timeout first (as any read).
    pub active_timeout_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseOutcome {
    /// Closed now (voided, or settled at its last reported units); the machine is free.
    Closed(Session),
    /// An operator closed it before: the session, nothing changed.
    AlreadyClosed(Session),
    /// It was closed otherwise (report, timeout, expiry): nothing changed.
    ClosedOtherwise(Session),
    SessionNotFound,
}

/// How a problem was resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResolutionKind {
    /// An operator dismissed it.
    Dismissed,
    /// A refund on its session resolved it.
    Refunded,
}

impl ResolutionKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Dismissed => "DISMISSED",
            Self::Refunded => "REFUNDED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Dismissed, Self::Refunded]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// How and by whom a problem was resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    pub kind: ResolutionKind,
    pub at: u64,
    /// The operator's principal.
    pub by: String,
    /// The dismissal's or the refund's reason.
    pub reason: Reason,
}

/// A user's "I paid and got nothing" on one of their sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub id: ProblemId,
    pub session: SessionId,
    pub user: UserId,
    pub reason: Reason,
    pub created_at: u64,
    /// `None` while open.
    pub resolution: Option<Resolution>,
}

/// A user reports a problem with their session.
#[derive(Debug, Clone)]
pub struct ProblemCommand {
    pub user: UserId,
    pub session: SessionId,
    pub reason: Reason,
    /// A fresh random id, used when a problem is opened.
    pub id: ProblemId,
    pub now: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProblemOutcome {
    Opened(Problem),
    /// The session already has an open problem: that one, nothing changed.
    Existing(Problem),
    /// No such session, or another user's.
    SessionNotFound,
}

/// An operator dismisses a problem.
#[derive(Debug, Clone)]
pub struct DismissCommand {
    pub id: ProblemId,
    pub reason: Reason,
    pub actor: String,
    pub now: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DismissOutcome {
    Dismissed(Problem),
    /// It was resolved before (dismissed or refunded): that problem, nothing changed.
    AlreadyResolved(Problem),
    NotFound,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_bounded_text_and_problem_ids_round_trip_through_hex() {
        assert!(Reason::parse("no water came out").is_ok());
        assert!(Reason::parse("  ").is_err());
        assert!(Reason::parse("a\nb").is_err());
        assert!(Reason::parse(&"x".repeat(501)).is_err());
        let id = ProblemId::from_bytes([0xab; 16]);
        assert_eq!(ProblemId::parse(&id.to_string()).unwrap(), id);
        assert!(ProblemId::parse("ab").is_err());
        assert!(ProblemId::parse(&"é".repeat(16)).is_err());
    }

    proptest::proptest! {
        #[test]
        fn parsing_arbitrary_strings_never_panics(s in ".*") {
            let _ = Reason::parse(&s);
            let _ = ProblemId::parse(&s);
        }
    }
}
