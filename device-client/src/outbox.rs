//! The persisted outbox: requests appended to a [`RecordLog`] *before* they are sent, sent in
//! order, dropped only when an authenticated answer for their sequence number arrives — and the
//! sequence-number high-water mark, the use counter, the clock offset and the telemetry counters
//! (boot count, lifetime units) next to them.
//!
//! **Sequence numbers never go back.** Numbers are handed out from a block reserved by persisting
//! a high-water mark ahead of use ([`Record::State`]); after a reboot numbering resumes at the
//! high-water mark, skipping whatever was reserved but unused (polls are not persisted, but their
//! numbers come from the reserved block too). The protocol allows gaps, never a step back.

use alloc::vec::Vec;

use crate::grant::Grant;
use crate::journal::{Durable, Entry, Op, Record};
use crate::log::RecordLog;

/// Why the outbox could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError<E: core::fmt::Debug> {
    /// The storage failed: nothing was persisted, so nothing must be sent.
    #[error("storage: {0:?}")]
    Storage(E),
    /// All 2^32 − 1 sequence numbers are used up.
    #[error("sequence numbers exhausted")]
    SeqExhausted,
    /// An acknowledgement for a sequence number that is not at the head of the queue.
    #[error("answer for seq {0}, which is not the oldest queued request")]
    NotHead(u32),
}

/// What recovery found in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Recovery {
    /// Intact records replayed.
    pub records: usize,
    /// Intact (CRC-valid) records that did not decode and were skipped (e.g. written by a newer
    /// firmware).
    pub skipped: usize,
}

/// The durable queue and counters over a [`RecordLog`].
#[derive(Debug)]
pub struct Outbox<L: RecordLog> {
    log: L,
    state: Durable,
    next_seq: u32,
    seq_block: u32,
}

impl<L: RecordLog> Outbox<L> {
    /// Recover from `log`: replay its intact records, cut a torn tail. Sequence numbers resume at
    /// the persisted high-water mark (at least 1); new blocks of `seq_block` numbers are reserved
    /// as needed.
    ///
    /// # Errors
    /// [`OutboxError::Storage`] when the log cannot be read.
    pub fn open(mut log: L, seq_block: u32) -> Result<(Self, Recovery), OutboxError<L::Error>> {
        let raw = log.recover().map_err(OutboxError::Storage)?;
        let mut state = Durable::default();
        let mut recovery = Recovery::default();
        for bytes in &raw {
            match Record::decode(bytes) {
                Some(r) => {
                    state.apply(&r);
                    recovery.records += 1;
                }
                None => recovery.skipped += 1,
            }
        }
        let next_seq = state.seq_high_water.max(1);
        Ok((
            Self {
                log,
                state,
                next_seq,
                seq_block: seq_block.max(1),
            },
            recovery,
        ))
    }

    /// The durable state (what a recovery would rebuild).
    pub const fn durable(&self) -> &Durable {
        &self.state
    }

    /// The oldest unacknowledged request: the only one that may be in flight.
    pub fn front(&self) -> Option<&Entry> {
        self.state.queue.front()
    }

    /// Unacknowledged requests, oldest first.
    pub fn queue(&self) -> impl Iterator<Item = &Entry> {
        self.state.queue.iter()
    }

    /// Number of unacknowledged requests.
    pub fn len(&self) -> usize {
        self.state.queue.len()
    }

    /// No unacknowledged request.
    pub fn is_empty(&self) -> bool {
        self.state.queue.is_empty()
    }

    /// The sequence number the next [`Outbox::take_seq`] returns.
    pub const fn peek_seq(&self) -> u32 {
        self.next_seq
    }

    /// The underlying log.
    pub const fn log(&self) -> &L {
        &self.log
    }

    /// Take the log back (e.g. to simulate a reboot in tests).
    pub fn into_log(self) -> L {
        self.log
    }

    fn append(&mut self, record: &Record) -> Result<(), OutboxError<L::Error>> {
        self.log
            .append(&record.encode())
            .map_err(OutboxError::Storage)?;
        self.state.apply(record);
        Ok(())
    }

    fn state_record(&self, seq_high_water: u32) -> Record {
        Record::State {
            seq_high_water,
            use_counter: self.state.use_counter,
            clock_offset: self.state.clock_offset,
            clock_synced: self.state.clock_synced,
        }
    }

    /// Install a rotated device key durably (one record: a torn write leaves the old key, which
    /// the server still accepts until it sees a frame under the new one).
    ///
    /// # Errors
    /// [`OutboxError::Storage`]: the key is then not installed.
    pub fn install_key(
        &mut self,
        key: crate::journal::KeyRecord,
    ) -> Result<(), OutboxError<L::Error>> {
        self.append(&Record::Key(key))
    }

    /// A fresh sequence number, strictly greater than every number handed out before, across
    /// reboots. Persists a new high-water mark first when the reserved block is used up.
    ///
    /// # Errors
    /// [`OutboxError::Storage`] (the number is then not handed out), [`OutboxError::SeqExhausted`].
    pub fn take_seq(&mut self) -> Result<u32, OutboxError<L::Error>> {
        let seq = self.next_seq;
        let after = seq.checked_add(1).ok_or(OutboxError::SeqExhausted)?;
        if seq >= self.state.seq_high_water {
            let hwm = seq.saturating_add(self.seq_block).max(after);
            self.append(&self.state_record(hwm))?;
        }
        self.next_seq = after;
        Ok(seq)
    }

    /// Never hand out a number below `floor` again (e.g. after the flash was replaced, with the
    /// number the server last accepted plus one). Persisted.
    ///
    /// # Errors
    /// [`OutboxError::Storage`].
    pub fn raise_seq_floor(&mut self, floor: u32) -> Result<(), OutboxError<L::Error>> {
        if floor > self.next_seq {
            self.next_seq = floor;
            if floor >= self.state.seq_high_water {
                self.append(&self.state_record(floor.saturating_add(self.seq_block)))?;
            }
        }
        Ok(())
    }

    /// Persist a request (sealed with a number from [`Outbox::take_seq`]) at the back of the
    /// queue. Only once this returned `Ok` may it be sent.
    ///
    /// # Errors
    /// [`OutboxError::Storage`]: it is not queued and must not be sent.
    pub fn enqueue(
        &mut self,
        seq: u32,
        op: Op,
        frame: Vec<u8>,
    ) -> Result<(), OutboxError<L::Error>> {
        self.append(&Record::Enqueue(Entry { seq, op, frame }))
    }

    /// The oldest request, `seq`, got an authenticated answer (`refused` if it carried an error
    /// code): persist that and drop it from the queue.
    ///
    /// # Errors
    /// [`OutboxError::NotHead`] when `seq` is not the oldest queued request (nothing changes);
    /// [`OutboxError::Storage`].
    pub fn ack(&mut self, seq: u32, refused: bool) -> Result<Entry, OutboxError<L::Error>> {
        let head = self
            .state
            .queue
            .front()
            .cloned()
            .filter(|e| e.seq == seq)
            .ok_or(OutboxError::NotHead(seq))?;
        self.append(&Record::Ack { seq, refused })?;
        Ok(head)
    }

    /// The oldest request, the press `seq`, was answered with a started session: persist the
    /// acknowledgement and the open session (`grant`, started, no units) in one record.
    ///
    /// # Errors
    /// [`OutboxError::NotHead`] when `seq` is not the oldest queued request (nothing changes);
    /// [`OutboxError::Storage`].
    pub fn started(&mut self, seq: u32, grant: Grant) -> Result<Entry, OutboxError<L::Error>> {
        let head = self
            .state
            .queue
            .front()
            .cloned()
            .filter(|e| e.seq == seq)
            .ok_or(OutboxError::NotHead(seq))?;
        self.append(&Record::Started { seq, grant })?;
        Ok(head)
    }

    /// Count one more boot (persisted). Returns the new boot count.
    ///
    /// # Errors
    /// [`OutboxError::Storage`].
    pub fn count_boot(&mut self) -> Result<u32, OutboxError<L::Error>> {
        let mut record = self.state.counters();
        if let Record::Counters { boot_count, .. } = &mut record {
            *boot_count = boot_count.saturating_add(1);
        }
        self.append(&record)?;
        Ok(self.state.boot_count)
    }

    /// Persist the clock offset (and that it came from the server).
    ///
    /// # Errors
    /// [`OutboxError::Storage`].
    pub fn save_clock(&mut self, offset: i64, synced: bool) -> Result<(), OutboxError<L::Error>> {
        self.append(&Record::State {
            seq_high_water: self.state.seq_high_water,
            use_counter: self.state.use_counter,
            clock_offset: offset,
            clock_synced: synced,
        })
    }

    /// Rewrite the log as a snapshot of the current state when it has grown beyond
    /// `threshold_bytes`. Returns whether it did.
    ///
    /// # Errors
    /// [`OutboxError::Storage`]; the old log is then still complete.
    pub fn compact_if_over(
        &mut self,
        threshold_bytes: usize,
    ) -> Result<bool, OutboxError<L::Error>> {
        if self.log.used_bytes() <= threshold_bytes {
            return Ok(false);
        }
        let records: Vec<Vec<u8>> = self.state.snapshot().iter().map(Record::encode).collect();
        self.log.replace(&records).map_err(OutboxError::Storage)?;
        Ok(true)
    }
}
