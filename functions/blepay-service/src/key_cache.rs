//! The derived device keys of recently heard machines, so an advert or frame check costs one
//! HMAC (its tag), not two (the derivation, then the tag).
//!
//! - Keyed by machine; an entry holds the keys of the epochs its record accepts (the current one
//!   and a pending rotation's) under its key version. A lookup whose record accepts other epochs
//!   or another version (a rotation, its completion, a revocation) derives afresh and replaces
//!   the entry, so a key the record no longer accepts is forgotten at its machine's next check;
//!   revoking and rotating also drop the entry at once ([`KeyCache::forget`]).
//! - Bounded: at most [`KEY_CACHE_MACHINES`] machines (S3-FIFO eviction, `quick_cache`). An
//!   evicted or replaced entry's keys are zeroized when dropped ([`DeviceKey`] zeroizes).
//! - Unregistered machine ids are never cached (random ids cannot push real machines out).
//! - Only the derivation is cached: which epochs verify is still decided from the store's record
//!   on every request.

use std::sync::Arc;

use blepay_core::{DeviceId, KeyEpoch, KeyVersion};
use blepay_proto::{DeviceKey, MasterKey, derive_device_key};
use quick_cache::sync::Cache;

/// The most machines whose keys are kept (about 150 bytes each).
pub const KEY_CACHE_MACHINES: usize = 65_536;

/// The keys of one machine's accepted epochs, current first.
#[derive(Debug)]
pub struct MachineKeys {
    version: KeyVersion,
    keys: Vec<(KeyEpoch, DeviceKey)>,
}

impl MachineKeys {
    /// The (epoch, key) pairs, current first.
    pub fn iter(&self) -> impl Iterator<Item = (KeyEpoch, &DeviceKey)> {
        self.keys.iter().map(|(e, k)| (*e, k))
    }

    fn holds(&self, version: KeyVersion, accepted: &[KeyEpoch]) -> bool {
        self.version == version
            && self.keys.len() == accepted.len()
            && self.keys.iter().zip(accepted).all(|((e, _), a)| e == a)
    }
}

/// See the module documentation.
pub struct KeyCache {
    machines: Cache<DeviceId, Arc<MachineKeys>>,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache")
            .field("machines", &self.machines.len())
            .finish()
    }
}

impl Default for KeyCache {
    fn default() -> Self {
        Self::new(KEY_CACHE_MACHINES)
    }
}

impl KeyCache {
    #[must_use]
    pub fn new(machines: usize) -> Self {
        Self {
            machines: Cache::new(machines),
        }
    }

    /// The keys of `device`'s `accepted` epochs (current first) under `version`, derived from
    /// `master` unless cached.
    pub fn keys(
        &self,
        master: &MasterKey,
        version: KeyVersion,
        device: DeviceId,
        accepted: &[KeyEpoch],
    ) -> Arc<MachineKeys> {
        if let Some(hit) = self
            .machines
            .get(&device)
            .filter(|m| m.holds(version, accepted))
        {
            return hit;
        }
        let fresh = Arc::new(MachineKeys {
            version,
            keys: accepted
                .iter()
                .map(|e| (*e, derive_device_key(master, version, device, *e)))
                .collect(),
        });
        self.machines.insert(device, Arc::clone(&fresh));
        fresh
    }

    /// Drop `device`'s keys (its keys changed: revoked, rotated).
    pub fn forget(&self, device: DeviceId) {
        self.machines.remove(&device);
    }

    /// How many machines' keys are held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.machines.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.machines.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn master() -> MasterKey {
        MasterKey::from_bytes([9; 32])
    }

    fn id(n: u8) -> DeviceId {
        DeviceId::from_bytes([0xd0, 0, 0, 0, 0, 0, 0, n])
    }

    fn epoch(n: u32) -> KeyEpoch {
        KeyEpoch::new(n)
    }

    #[test]
    fn a_hit_is_the_derived_key_and_a_changed_record_derives_afresh() {
        let cache = KeyCache::new(16);
        let v = KeyVersion::new(1).unwrap();
        let first = cache.keys(&master(), v, id(1), &[KeyEpoch::FIRST]);
        let again = cache.keys(&master(), v, id(1), &[KeyEpoch::FIRST]);
        assert!(
            Arc::ptr_eq(&first, &again),
            "the second check reuses the derivation"
        );
        let expected = derive_device_key(&master(), v, id(1), KeyEpoch::FIRST);
        assert_eq!(
            first.iter().next().unwrap().1.expose_bytes(),
            expected.expose_bytes()
        );

        // A rotation: the record now accepts epochs 0 and 1.
        let rotating = cache.keys(&master(), v, id(1), &[KeyEpoch::FIRST, epoch(1)]);
        let epochs: Vec<_> = rotating.iter().map(|(e, _)| e).collect();
        assert_eq!(epochs, [KeyEpoch::FIRST, epoch(1)]);
        assert_eq!(
            rotating.iter().nth(1).unwrap().1.expose_bytes(),
            derive_device_key(&master(), v, id(1), epoch(1)).expose_bytes()
        );
        // Completed: only epoch 1; the old key is no longer held by the cache.
        let done = cache.keys(&master(), v, id(1), &[epoch(1)]);
        assert_eq!(done.iter().count(), 1);
        drop((first, again, rotating));
        assert!(
            !cache
                .machines
                .get(&id(1))
                .unwrap()
                .holds(v, &[KeyEpoch::FIRST])
        );
    }

    #[test]
    fn revoked_means_no_keys_and_forget_drops_the_entry() {
        let cache = KeyCache::new(16);
        let v = KeyVersion::new(0).unwrap();
        let _ = cache.keys(&master(), v, id(2), &[KeyEpoch::FIRST]);
        assert_eq!(cache.keys(&master(), v, id(2), &[]).iter().count(), 0);
        cache.forget(id(2));
        assert!(cache.is_empty());
    }

    #[test]
    fn the_cache_stays_within_its_bound() {
        let cache = KeyCache::new(100);
        let v = KeyVersion::new(0).unwrap();
        for n in 0..=255u8 {
            for m in 0..4u8 {
                let d = DeviceId::from_bytes([m, 0, 0, 0, 0, 0, 0, n]);
                let _ = cache.keys(&master(), v, d, &[KeyEpoch::FIRST]);
            }
        }
        assert!(cache.len() <= 110, "{} machines held", cache.len());
    }
}
