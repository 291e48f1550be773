//! The fleet list's query string and cursor, a PATCH body and a spending-limit body: any input is
//! an answer or a stable INVALID_ARGUMENT, never a panic, and (a refusal) changes nothing.

#![allow(clippy::unwrap_used)] // a test file

use std::sync::Arc;

use blepay_proto::pb::v1 as pb;
use blepay_service::config::{Config, Keyring, SecretString};
use blepay_service::devices::ListDevicesQuery;
use blepay_service::{App, ErrorCode, Operator};
use blepay_sqlite::SqliteStore;
use proptest::prelude::*;

fn shared() -> &'static (tokio::runtime::Runtime, App, tempfile::TempDir) {
    static SHARED: std::sync::OnceLock<(tokio::runtime::Runtime, App, tempfile::TempDir)> =
        std::sync::OnceLock::new();
    SHARED.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let config = Config {
            keyring: Keyring::parse(&format!("0:{}", "00".repeat(32))).unwrap(),
            phone_tokens: blepay_service::config::TokenVerifier::unguessable(
                blepay_service::config::TokenPolicy::default(),
            ),
            ops_token: SecretString::new("ops-token-0123456789".into()),
            start_timeout_secs: 120,
            offline_after_secs: 300,
            active_timeout_secs: 14_400,
            currency: blepay_core::Currency::parse("EUR").unwrap(),
            pay_limits: blepay_service::config::PayLimits::default(),
            support_refund_max: blepay_core::Amount::new(5_000).unwrap(),
            providers: blepay_service::config::Providers::none(),
        };
        let store = SqliteStore::open(&dir.path().join("blepay.db")).unwrap();
        let app = App::new(config, Arc::new(store), Arc::new(|| 1_770_000_000));
        (rt, app, dir)
    })
}

fn opt(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_fleet_query_is_a_page_or_invalid_argument(
        state in "(IDLE|BUSY|OFFLINE|FAULT|idle|\\PC{0,12})",
        service in "(IN_SERVICE|OUT_OF_SERVICE|DECOMMISSIONED|\\PC{0,12})",
        q in "\\PC{0,80}",
        limit in "([0-9]{0,4}|-?[0-9a-z]{0,6})",
        cursor in "([A-Za-z0-9_-]{0,40}|\\PC{0,30})",
    ) {
        let (rt, app, _) = shared();
        let query = ListDevicesQuery {
            state: opt(&state),
            service_state: opt(&service),
            q: opt(&q),
            limit: opt(&limit),
            cursor: opt(&cursor),
        };
        let answer = query.into_request().and_then(|req| {
            rt.block_on(app.list_devices(&Operator::bootstrap(), req))
        });
        match answer {
            Ok(page) => prop_assert!(page.devices.is_empty()),
            Err(e) => prop_assert_eq!(e.code, ErrorCode::InvalidArgument, "{}", e.message),
        }
    }

    #[test]
    fn any_fleet_request_over_grpc_is_a_page_or_invalid_argument(
        state in any::<i32>(), service in any::<i32>(), limit in any::<u32>(),
        cursor in "\\PC{0,60}",
    ) {
        let (rt, app, _) = shared();
        let req = pb::ListDevicesRequest { state, service_state: service, q: String::new(), limit, cursor };
        match rt.block_on(app.list_devices(&Operator::bootstrap(), req)) {
            Ok(page) => prop_assert!(page.devices.is_empty()),
            Err(e) => prop_assert_eq!(e.code, ErrorCode::InvalidArgument, "{}", e.message),
        }
    }

    #[test]
    fn any_patch_body_is_refused_with_a_stable_code_and_changes_nothing(
        bytes in proptest::collection::vec(any::<u8>(), 0..200),
        name in proptest::option::of("\\PC{0,80}"),
        price in any::<i64>(), service in any::<i32>(),
    ) {
        let (rt, app, _) = shared();
        let _ = serde_json::from_slice::<pb::UpdateDeviceRequest>(&bytes);
        let _ = serde_json::from_slice::<pb::SetSpendingLimitRequest>(&bytes);
        let req = pb::UpdateDeviceRequest {
            device_id: "00112233445566ff".into(),
            name,
            tariff: Some(pb::Tariff { price_per_unit: price, unit_name: "litre".into(), currency: "EUR".into() }),
            service_state: service,
        };
        // No machine is registered: every answer is a refusal.
        let e = rt.block_on(app.update_device(&Operator::bootstrap(), req)).unwrap_err();
        prop_assert!(matches!(e.code, ErrorCode::InvalidArgument | ErrorCode::DeviceUnknown), "{:?}", e);
    }

    #[test]
    fn any_spending_limit_is_set_or_invalid_argument(limit in proptest::option::of(any::<i64>())) {
        let (rt, app, _) = shared();
        let req = pb::SetSpendingLimitRequest { user_id: "prop-user".into(), daily_limit: limit };
        match rt.block_on(app.set_spending_limit(&Operator::bootstrap(), req)) {
            Ok(w) => prop_assert!(w.daily_limit >= 0 && w.spent_today == 0),
            Err(e) => prop_assert_eq!(e.code, ErrorCode::InvalidArgument, "{}", e.message),
        }
    }
}

#[test]
fn roles_without_the_right_are_forbidden_the_lifecycle_and_the_cap_and_change_nothing() {
    use blepay_service::Role;
    let (rt, app, _) = shared();
    let as_role = |role| Operator {
        principal: format!("op:{}", Role::as_str(role)),
        role,
    };
    for role in [Role::Support, Role::Finance] {
        let patch = pb::UpdateDeviceRequest {
            device_id: "00112233445566ee".into(),
            name: Some("Renamed".into()),
            ..pb::UpdateDeviceRequest::default()
        };
        let e = rt
            .block_on(app.update_device(&as_role(role), patch))
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden, "{role:?}");
        let e = rt
            .block_on(app.decommission_device(&as_role(role), "00112233445566ee"))
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden, "{role:?}");
    }
    for role in [Role::Technician, Role::Finance] {
        let req = pb::SetSpendingLimitRequest {
            user_id: "forbidden-user".into(),
            daily_limit: Some(1),
        };
        let e = rt
            .block_on(app.set_spending_limit(&as_role(role), req))
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden, "{role:?}");
    }
    let w = rt
        .block_on(app.wallet(&blepay_core::UserId::parse("forbidden-user").unwrap()))
        .unwrap();
    assert!(
        !w.daily_limit_overridden,
        "a forbidden call changed nothing"
    );
    let req = pb::ListDevicesRequest::default();
    assert!(
        rt.block_on(app.list_devices(&as_role(Role::Finance), req))
            .is_ok()
    );
}
