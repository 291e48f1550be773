//! An operator's change to a machine (`PATCH /v1/ops/devices/{id}`, decommission): what it
//! answers and writes, decided once for both stores.

use crate::{DeviceRecord, DeviceUpdate, ServiceState};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceUpdateDecision {
    /// Write this record (conditioned on the one read).
    Write(DeviceRecord),
    /// The update asks for what the record already is: write nothing, answer it.
    Unchanged,
    /// The machine is DECOMMISSIONED and the update is not "decommission again": refused.
    Decommissioned,
}

/// Decide an update of `current`. DECOMMISSIONED is terminal: once there, any update but
/// decommissioning again (which is [`DeviceUpdateDecision::Unchanged`]) is refused, so nothing
/// brings a decommissioned machine back. A new tariff only changes the record: every session
/// copies the tariff it was authorized with, so an open session keeps its own.
pub fn decide_device_update(current: &DeviceRecord, update: &DeviceUpdate) -> DeviceUpdateDecision {
    if current.service_state == ServiceState::Decommissioned {
        return if *update == DeviceUpdate::decommission() {
            DeviceUpdateDecision::Unchanged
        } else {
            DeviceUpdateDecision::Decommissioned
        };
    }
    let mut next = current.clone();
    if let Some(name) = &update.name {
        next.name = name.clone();
    }
    if let Some(tariff) = &update.tariff {
        next.tariff = tariff.clone();
    }
    if let Some(state) = update.service_state {
        next.service_state = state;
    }
    if next == *current {
        DeviceUpdateDecision::Unchanged
    } else {
        DeviceUpdateDecision::Write(next)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use blepay_core::{Amount, Currency, DeviceId, DeviceName, KeyVersion, Tariff, UnitName};

    use super::*;

    fn record() -> DeviceRecord {
        DeviceRecord {
            id: DeviceId::from_bytes([1; 8]),
            name: DeviceName::parse("Water").unwrap(),
            tariff: Tariff {
                price_per_unit: Amount::new(25).unwrap(),
                unit_name: UnitName::parse("litre").unwrap(),
                currency: Currency::parse("EUR").unwrap(),
            },
            key_version: KeyVersion::new(0).unwrap(),
            created_at: 1,
            service_state: ServiceState::InService,
            keys: crate::DeviceKeys::default(),
        }
    }

    #[test]
    fn an_update_to_the_same_values_writes_nothing() {
        let r = record();
        let same = DeviceUpdate {
            name: Some(r.name.clone()),
            tariff: Some(r.tariff.clone()),
            service_state: Some(ServiceState::InService),
        };
        assert_eq!(
            decide_device_update(&r, &same),
            DeviceUpdateDecision::Unchanged
        );
        assert_eq!(
            decide_device_update(&r, &DeviceUpdate::default()),
            DeviceUpdateDecision::Unchanged
        );
    }

    #[test]
    fn an_update_changes_only_the_fields_it_names() {
        let r = record();
        let out = DeviceUpdate {
            service_state: Some(ServiceState::OutOfService),
            ..DeviceUpdate::default()
        };
        let DeviceUpdateDecision::Write(next) = decide_device_update(&r, &out) else {
            unreachable!("a change is written");
        };
        assert_eq!(next.service_state, ServiceState::OutOfService);
        assert_eq!(next.tariff, r.tariff);
        assert_eq!(next.name, r.name);
    }

    #[test]
    fn a_decommissioned_machine_accepts_nothing_but_decommissioning_again() {
        let mut r = record();
        r.service_state = ServiceState::Decommissioned;
        assert_eq!(
            decide_device_update(&r, &DeviceUpdate::decommission()),
            DeviceUpdateDecision::Unchanged
        );
        for state in [ServiceState::InService, ServiceState::OutOfService] {
            let back = DeviceUpdate {
                service_state: Some(state),
                ..DeviceUpdate::default()
            };
            assert_eq!(
                decide_device_update(&r, &back),
                DeviceUpdateDecision::Decommissioned
            );
        }
        let rename = DeviceUpdate {
            name: Some(DeviceName::parse("Other").unwrap()),
            ..DeviceUpdate::default()
        };
        assert_eq!(
            decide_device_update(&r, &rename),
            DeviceUpdateDecision::Decommissioned
        );
    }
}
