//! Operators as principals: who is calling an ops route, with which role, and what each role may
//! do. Every ops handler in [`crate::App`] takes an [`Operator`] and calls
//! [`crate::App::authorize`] with the [`Action`] it is about to perform before it reads or writes
//! anything; a refusal is `403 FORBIDDEN` and changes nothing.
//!
//! The permission table is [`Role::allows`], the only place it lives.

use blepay_core::Amount;

/// An operator's role (docs/api.md "Operators and roles").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Everything, operators included.
    Owner,
    /// Read; refunds up to the deployment's support refund cap; problems; closing stuck
    /// sessions; per-user spending limits.
    Support,
    /// Read, reports and the audit trail.
    Finance,
    /// Machines (register, change, take out of service, keys), no money.
    Technician,
}

impl Role {
    pub const ALL: [Self; 4] = [Self::Owner, Self::Support, Self::Finance, Self::Technician];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Owner => "owner",
            Self::Support => "support",
            Self::Finance => "finance",
            Self::Technician => "technician",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether this role may perform `action`; `support_refund_max` is the largest refund a
    /// support operator may make.
    pub fn allows(self, action: &Action, support_refund_max: Amount) -> bool {
        use Action as A;
        match self {
            Self::Owner => true,
            Self::Support => match action {
                A::ReadDevices
                | A::ReadMoney
                | A::CloseSession
                | A::ResolveProblem
                | A::SetSpendingLimit => true,
                A::Refund { amount } => *amount <= support_refund_max,
                _ => false,
            },
            Self::Finance => matches!(
                action,
                A::ReadDevices | A::ReadMoney | A::ReadReports | A::ReadAudit
            ),
            Self::Technician => matches!(
                action,
                A::ReadDevices | A::RegisterDevice | A::ManageDevice | A::DeviceKeys
            ),
        }
    }
}

/// What an ops request is about to do, as far as permissions go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Machines: one, the list, their telemetry.
    ReadDevices,
    /// Wallets, sessions, ledgers, problems.
    ReadMoney,
    /// Sales reports.
    ReadReports,
    /// The audit trail.
    ReadAudit,
    RegisterDevice,
    /// Name, tariff, service state, decommissioning.
    ManageDevice,
    /// Revoke or rotate a machine's key.
    DeviceKeys,
    TopUp,
    Refund {
        amount: Amount,
    },
    /// Close (void or settle) a session by hand.
    CloseSession,
    /// Dismiss a problem report.
    ResolveProblem,
    /// A user's daily spending cap.
    SetSpendingLimit,
    /// Create, list or revoke operators.
    ManageOperators,
}

/// The caller of an ops route, authenticated: by the bootstrap ops token (an owner), by an
/// operator credential, or upstream (API Gateway's IAM authorizer on AWS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    /// Who, as the audit trail and the ledger name them (`ops-token`, `op:<id>`, an IAM ARN).
    pub principal: String,
    pub role: Role,
}

impl Operator {
    /// The principal the configured `BLEPAY_OPS_TOKEN` authenticates: an owner.
    pub const BOOTSTRAP_PRINCIPAL: &'static str = "ops-token";

    pub fn bootstrap() -> Self {
        Self {
            principal: Self::BOOTSTRAP_PRINCIPAL.to_owned(),
            role: Role::Owner,
        }
    }
}

/// The default largest refund a support operator may make: 50.00 in minor units.
pub const DEFAULT_SUPPORT_REFUND_MAX: i64 = 5_000;

/// One operator action that changed something, for the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionRecord {
    /// A stable name (`device.register`, `wallet.top_up`, `session.refund`, …).
    pub action: &'static str,
    /// What it acted on (a device id, user id, session id, operator id).
    pub target: String,
    pub amount: Option<Amount>,
    pub idempotency_key: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_and_only_owner_manages_operators() {
        let cap = Amount::new(100).unwrap_or(Amount::ZERO);
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
            assert_eq!(
                r.allows(&Action::ManageOperators, cap),
                r == Role::Owner,
                "{r:?}"
            );
        }
        assert!(Role::Support.allows(&Action::Refund { amount: cap }, cap));
        let over = Amount::new(101).unwrap_or(Amount::MAX);
        assert!(!Role::Support.allows(&Action::Refund { amount: over }, cap));
        assert!(!Role::Technician.allows(&Action::ReadMoney, cap));
        assert!(!Role::Finance.allows(&Action::TopUp, cap));
    }
}
