//! What this process last knew of each device item: a *guess*, never an authority.
//!
//! A machine request (and a pay right after the service's verify-style device read) can skip its
//! read when the guess is present: the store decides from the guess exactly as it would from a
//! read, and the write is conditioned on every guessed fact the decision used (`last_seq`, the
//! open session's id and status, `last_seen`, the tariff). A write that succeeds therefore acted
//! on the item as it really was at that instant, as if it had been read then; a write whose
//! condition fails changed nothing, and the operation runs again the usual way (read, then
//! write). Entries are replaced by every read of a device item and by every write this process
//! made to one; they never need to be fresh, only to be checked.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use blepay_core::{DeviceId, SessionId};

use crate::items::DeviceItem;

/// Entries kept at most (a guess missing costs a read, nothing else).
const CAPACITY: usize = 10_000;

#[derive(Debug, Clone)]
pub(crate) struct Shadow {
    enabled: bool,
    devices: Arc<Mutex<HashMap<DeviceId, DeviceItem>>>,
}

impl Default for Shadow {
    fn default() -> Self {
        Self {
            enabled: true,
            devices: Arc::default(),
        }
    }
}

impl Shadow {
    /// A shadow that never guesses (every operation reads first).
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            devices: Arc::default(),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<DeviceId, DeviceItem>) -> T) -> Option<T> {
        if !self.enabled {
            return None;
        }
        // A panic while holding the lock cannot leave a half-written guess worse than a stale
        // one, and every guess is checked anyway.
        let mut devices = self.devices.lock().unwrap_or_else(PoisonError::into_inner);
        Some(f(&mut devices))
    }

    pub fn get(&self, id: DeviceId) -> Option<DeviceItem> {
        self.with(|d| d.get(&id).cloned()).flatten()
    }

    pub fn put(&self, item: DeviceItem) {
        self.with(|d| {
            if d.len() >= CAPACITY && !d.contains_key(&item.record.id) {
                d.clear();
            }
            d.insert(item.record.id, item);
        });
    }

    pub fn forget(&self, id: DeviceId) {
        self.with(|d| d.remove(&id));
    }

    /// Change the guess for `id`, if there is one.
    pub fn update(&self, id: DeviceId, f: impl FnOnce(&mut DeviceItem)) {
        self.with(|d| d.get_mut(&id).map(f));
    }

    /// `session` was closed (expired) on `id`: its lock is gone.
    pub fn closed(&self, id: DeviceId, session: SessionId) {
        self.update(id, |d| {
            if d.open.as_ref().is_some_and(|o| o.id == session) {
                d.open = None;
            }
        });
    }
}
