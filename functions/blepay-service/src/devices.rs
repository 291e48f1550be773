//! The operator's machine lifecycle (the fleet list, name / tariff / service state,
//! decommissioning) and the per-user daily spending cap (issue 11, items 4 and 6).

use blepay_core::{Amount, Currency, DeviceId, DeviceName, Tariff, UnitName};
use blepay_proto::pb::v1 as pb;
use blepay_store::{
    DeviceFilter, DeviceState, DeviceStatus, DeviceUpdate, DeviceUpdateOutcome, ServiceState,
    Spending, effective_daily_limit, listed_state,
};

use crate::app::App;

/// The most fleet pages one metrics scrape reads.
pub const MAX_GAUGE_PAGES: usize = 500;
use crate::error::{ApiError, ErrorCode};
use crate::operator::{Action, ActionRecord, Operator};
use crate::page::{encode_cursor, page_request};

/// The longest name prefix (`q`) the fleet list accepts.
pub const MAX_NAME_PREFIX_LEN: usize = 64;

impl App {
    /// Count the fleet by state for the `blepay_machines{state}` gauges (online = IDLE or
    /// BUSY), reading it page by page; at most [`MAX_GAUGE_PAGES`] pages of the largest size
    /// (250,000 machines) per scrape.
    ///
    /// # Errors
    /// RETRY_LATER when the store cannot be read (the gauges keep their last values).
    pub async fn refresh_machine_gauges(&self) -> Result<(), ApiError> {
        let filter = DeviceFilter {
            state: None,
            service_state: None,
            name_prefix: None,
            offline_after_secs: self.config().offline_after_secs,
        };
        let now = self.now();
        let mut page = blepay_store::PageRequest {
            limit: blepay_store::PageRequest::MAX_LIMIT,
            after: None,
        };
        let (mut online, mut offline, mut fault) = (0u64, 0u64, 0u64);
        for _ in 0..MAX_GAUGE_PAGES {
            let got = self.store().list_devices(&filter, &page, now).await?;
            for d in &got.items {
                match listed_state(d, now, self.config().offline_after_secs) {
                    DeviceState::Idle | DeviceState::Busy => online += 1,
                    DeviceState::Offline => offline += 1,
                    DeviceState::Fault => fault += 1,
                }
            }
            match got.next {
                Some(next) => page.after = Some(next),
                None => break,
            }
        }
        self.metrics().set_machines(online, offline, fault);
        Ok(())
    }

    /// The fleet, sorted by device id, filtered by state, service state and name prefix, one
    /// cursor page at a time.
    ///
    /// # Errors
    /// FORBIDDEN, INVALID_ARGUMENT (a filter, `limit` or `cursor`), RETRY_LATER.
    pub async fn list_devices(
        &self,
        op: &Operator,
        req: pb::ListDevicesRequest,
    ) -> Result<pb::ListDevicesResponse, ApiError> {
        self.authorize(op, &Action::ReadDevices)?;
        let state = match pb::DeviceState::try_from(req.state) {
            Ok(pb::DeviceState::Unspecified) => None,
            Ok(pb::DeviceState::Idle) => Some(DeviceState::Idle),
            Ok(pb::DeviceState::Busy) => Some(DeviceState::Busy),
            Ok(pb::DeviceState::Offline) => Some(DeviceState::Offline),
            Ok(pb::DeviceState::Fault) => Some(DeviceState::Fault),
            Err(_) => return Err(ApiError::invalid("state: not a device state")),
        };
        let service_state = service_state_of(req.service_state)
            .map_err(|()| ApiError::invalid("serviceState: not a service state"))?;
        let name_prefix = match req.q.as_str() {
            "" => None,
            q if q.len() > MAX_NAME_PREFIX_LEN || q.chars().any(char::is_control) => {
                return Err(ApiError::invalid(format!(
                    "q: a name prefix of at most {MAX_NAME_PREFIX_LEN} bytes, no control characters"
                )));
            }
            q => Some(q.to_owned()),
        };
        let page = page_request(
            (req.limit != 0).then_some(req.limit),
            Some(req.cursor.as_str()),
        )?;
        if let Some(after) = &page.after {
            if after.at != 0 || DeviceId::parse(&after.id).is_err() {
                return Err(ApiError::invalid("cursor: not a cursor this list issued"));
            }
        }
        let filter = DeviceFilter {
            state,
            service_state,
            name_prefix,
            offline_after_secs: self.config().offline_after_secs,
        };
        let now = self.now();
        let listed = self.store().list_devices(&filter, &page, now).await?;
        Ok(pb::ListDevicesResponse {
            devices: listed
                .items
                .iter()
                .map(|d| self.device_pb(d, now))
                .collect(),
            next_cursor: listed.next.as_ref().map(encode_cursor).unwrap_or_default(),
        })
    }

    /// Change a machine's name, tariff or service state (IN_SERVICE / OUT_OF_SERVICE). The same
    /// values again change nothing and answer the same.
    ///
    /// # Errors
    /// FORBIDDEN, INVALID_ARGUMENT, DEVICE_UNKNOWN, DEVICE_OUT_OF_SERVICE (decommissioned),
    /// RETRY_LATER.
    pub async fn update_device(
        &self,
        op: &Operator,
        req: pb::UpdateDeviceRequest,
    ) -> Result<pb::Device, ApiError> {
        self.authorize(op, &Action::ManageDevice)?;
        let id = parse_device(&req.device_id)?;
        let name = req
            .name
            .as_deref()
            .map(DeviceName::parse)
            .transpose()
            .map_err(|e| ApiError::invalid(format!("name: {e}")))?;
        let tariff = req.tariff.as_ref().map(|t| self.tariff_of(t)).transpose()?;
        let service_state = match service_state_of(req.service_state) {
            Ok(Some(ServiceState::Decommissioned)) => {
                return Err(ApiError::invalid(
                    "serviceState: IN_SERVICE or OUT_OF_SERVICE (decommission a machine with \
                     POST /v1/ops/devices/{deviceId}/decommission)",
                ));
            }
            Ok(s) => s,
            Err(()) => return Err(ApiError::invalid("serviceState: not a service state")),
        };
        let update = DeviceUpdate {
            name,
            tariff,
            service_state,
        };
        self.change_device(op, id, &update, "device.update").await
    }

    /// Decommission a machine: DECOMMISSIONED for good (pay refused, no update brings it back),
    /// its history kept. Again: the same answer, nothing changed.
    ///
    /// # Errors
    /// FORBIDDEN, INVALID_ARGUMENT, DEVICE_UNKNOWN, RETRY_LATER.
    pub async fn decommission_device(
        &self,
        op: &Operator,
        device_id: &str,
    ) -> Result<pb::Device, ApiError> {
        self.authorize(op, &Action::ManageDevice)?;
        let id = parse_device(device_id)?;
        self.change_device(op, id, &DeviceUpdate::decommission(), "device.decommission")
            .await?;
        self.device_decommissioned(op, id).await?;
        self.ops_device(op, device_id).await
    }

    /// What else decommissioning does once the machine is DECOMMISSIONED (run on every
    /// decommission call, a repeat included, so it is idempotent): its key is revoked, so
    /// its adverts and frames are refused as forged for good and its open session is closed
    /// (docs/protocol.md §1.1).
    ///
    /// # Errors
    /// What the revocation returns.
    pub async fn device_decommissioned(&self, op: &Operator, id: DeviceId) -> Result<(), ApiError> {
        if self.revoke(id, "decommissioned").await? {
            self.record_action(
                op,
                ActionRecord {
                    action: "device.revoke",
                    target: id.to_string(),
                    amount: None,
                    idempotency_key: None,
                },
            )
            .await?;
        }
        Ok(())
    }

    async fn change_device(
        &self,
        op: &Operator,
        id: DeviceId,
        update: &DeviceUpdate,
        action: &'static str,
    ) -> Result<pb::Device, ApiError> {
        let now = self.now();
        match self.store().update_device(id, update, now).await? {
            DeviceUpdateOutcome::Updated(d) => {
                self.record_action(
                    op,
                    ActionRecord {
                        action,
                        target: id.to_string(),
                        amount: None,
                        idempotency_key: None,
                    },
                )
                .await?;
                Ok(self.device_pb(&d, now))
            }
            DeviceUpdateOutcome::Unchanged(d) => Ok(self.device_pb(&d, now)),
            DeviceUpdateOutcome::DeviceUnknown => Err(ApiError::new(
                ErrorCode::DeviceUnknown,
                format!("no device {id} is registered"),
            )),
            DeviceUpdateOutcome::Decommissioned => Err(ApiError::new(
                ErrorCode::DeviceOutOfService,
                format!("device {id} is decommissioned: it cannot be changed or put back"),
            )),
        }
    }

    /// Set a user's daily spending cap (`dailyLimit`, minor units, 0 = no cap for them), or clear
    /// it (absent: the deployment default applies). Setting the same value again is the same.
    ///
    /// # Errors
    /// FORBIDDEN, INVALID_ARGUMENT, RETRY_LATER.
    pub async fn set_spending_limit(
        &self,
        op: &Operator,
        req: pb::SetSpendingLimitRequest,
    ) -> Result<pb::Wallet, ApiError> {
        self.authorize(op, &Action::SetSpendingLimit)?;
        let user = App::parse_user(&req.user_id)?;
        let limit = req
            .daily_limit
            .map(Amount::new)
            .transpose()
            .map_err(|e| ApiError::invalid(format!("dailyLimit: {e}")))?;
        let now = self.now();
        let before = self.store().spending(&user, now).await?;
        self.store().set_spending_limit(&user, limit, now).await?;
        if before.user_override != limit {
            self.record_action(
                op,
                ActionRecord {
                    action: "wallet.spending_limit",
                    target: user.to_string(),
                    amount: limit,
                    idempotency_key: None,
                },
            )
            .await?;
        }
        self.wallet(&user).await
    }

    /// A machine as the operator sees it.
    pub(crate) fn device_pb(&self, status: &DeviceStatus, now: u64) -> pb::Device {
        let state = listed_state(status, now, self.config().offline_after_secs);
        let d = &status.device;
        pb::Device {
            device_id: d.id.to_string(),
            name: d.name.as_str().to_owned(),
            price_per_unit: d.tariff.price_per_unit.minor(),
            unit_name: d.tariff.unit_name.as_str().to_owned(),
            currency: d.tariff.currency.to_string(),
            key_version: u32::from(d.key_version.get()),
            created_at: i64::try_from(d.created_at).unwrap_or(i64::MAX),
            state: crate::app::device_state_pb(state) as i32,
            last_seen_at: status
                .last_seen
                .map_or(0, |t| i64::try_from(t).unwrap_or(i64::MAX)),
            open_session_id: status
                .open_session
                .map(|s| s.to_string())
                .unwrap_or_default(),
            telemetry: status.telemetry.as_ref().map(crate::app::telemetry_pb),
            telemetry_at: status
                .telemetry_at
                .map_or(0, |t| i64::try_from(t).unwrap_or(i64::MAX)),
            service_state: service_state_pb(d.service_state) as i32,
            ..crate::device_keys::key_fields(&d.keys)
        }
    }

    /// A user's wallet fields of the daily cap.
    pub(crate) fn spending_pb(&self, s: &Spending, w: &mut pb::Wallet) {
        let cap = effective_daily_limit(s.user_override, self.config().pay_limits.daily_limit());
        w.daily_limit = cap.map_or(0, Amount::minor);
        w.spent_today = s.spent_today.minor();
        w.daily_limit_overridden = s.user_override.is_some();
    }

    fn tariff_of(&self, t: &pb::Tariff) -> Result<Tariff, ApiError> {
        let price_per_unit = Amount::positive(t.price_per_unit)
            .map_err(|e| ApiError::invalid(format!("tariff.pricePerUnit: {e}")))?;
        let unit_name = UnitName::parse(&t.unit_name)
            .map_err(|e| ApiError::invalid(format!("tariff.unitName: {e}")))?;
        let currency = Currency::parse(&t.currency)
            .map_err(|e| ApiError::invalid(format!("tariff.currency: {e}")))?;
        if currency != self.config().currency {
            return Err(ApiError::invalid(format!(
                "tariff.currency: this deployment uses {}",
                self.config().currency
            )));
        }
        Ok(Tariff {
            price_per_unit,
            unit_name,
            currency,
        })
    }
}

fn parse_device(s: &str) -> Result<DeviceId, ApiError> {
    DeviceId::parse(s).map_err(|e| ApiError::invalid(format!("deviceId: {e}")))
}

/// A wire service state: `None` when unspecified, `Err` when not one.
fn service_state_of(v: i32) -> Result<Option<ServiceState>, ()> {
    match pb::ServiceState::try_from(v) {
        Ok(pb::ServiceState::Unspecified) => Ok(None),
        Ok(pb::ServiceState::InService) => Ok(Some(ServiceState::InService)),
        Ok(pb::ServiceState::OutOfService) => Ok(Some(ServiceState::OutOfService)),
        Ok(pb::ServiceState::Decommissioned) => Ok(Some(ServiceState::Decommissioned)),
        Err(_) => Err(()),
    }
}

pub(crate) fn service_state_pb(s: ServiceState) -> pb::ServiceState {
    match s {
        ServiceState::InService => pb::ServiceState::InService,
        ServiceState::OutOfService => pb::ServiceState::OutOfService,
        ServiceState::Decommissioned => pb::ServiceState::Decommissioned,
    }
}

/// The fleet list's query string (`?state=&serviceState=&q=&limit=&cursor=`), as the HTTP route
/// reads it.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListDevicesQuery {
    pub state: Option<String>,
    pub service_state: Option<String>,
    pub q: Option<String>,
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

impl ListDevicesQuery {
    /// The request it means.
    ///
    /// # Errors
    /// INVALID_ARGUMENT naming the parameter.
    pub fn into_request(self) -> Result<pb::ListDevicesRequest, ApiError> {
        let state = match self.state.as_deref() {
            None | Some("") => pb::DeviceState::Unspecified,
            Some(s) => pb::DeviceState::from_str_name(s)
                .filter(|s| *s != pb::DeviceState::Unspecified)
                .ok_or_else(|| ApiError::invalid("state: IDLE, BUSY, OFFLINE or FAULT"))?,
        };
        let service_state = match self.service_state.as_deref() {
            None | Some("") => pb::ServiceState::Unspecified,
            Some(s) => pb::ServiceState::from_str_name(s)
                .filter(|s| *s != pb::ServiceState::Unspecified)
                .ok_or_else(|| {
                    ApiError::invalid("serviceState: IN_SERVICE, OUT_OF_SERVICE or DECOMMISSIONED")
                })?,
        };
        let limit = match self.limit.as_deref() {
            None | Some("") => 0,
            Some(l) => l
                .parse::<u32>()
                .ok()
                .filter(|n| *n != 0)
                .ok_or_else(|| ApiError::invalid("limit: must be 1..=500"))?,
        };
        Ok(pb::ListDevicesRequest {
            state: state as i32,
            service_state: service_state as i32,
            q: self.q.unwrap_or_default(),
            limit,
            cursor: self.cursor.unwrap_or_default(),
        })
    }
}
