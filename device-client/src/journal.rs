//! The records the outbox writes into a [`RecordLog`](crate::log::RecordLog), and how replaying
//! them rebuilds the durable state.
//!
//! Payload layouts (integers big-endian; each record is then framed with a CRC by the log):
//!
//! | record | tag | fields |
//! |---|---|---|
//! | [`Record::State`] | `01` | `seq_high_water` u32, `use_counter` u16, `clock_offset` i64, `clock_synced` u8 |
//! | [`Record::Enqueue`] | `02` | `seq` u32, op, `frame_len` u16, frame |
//! | [`Record::Ack`] | `03` | `seq` u32, `refused` u8 |
//! | [`Record::Session`] | `04` | grant, `started` u8, `units` u64 |
//! | [`Record::Started`] | `05` | `seq` u32, grant |
//! | [`Record::Counters`] | `06` | `boot_count` u32, `lifetime_units` u64, `last_final` (16, zeros: none) |
//!
//! op = `01` grant (legacy start), `02` `session_id` (16), `units` u64, `final` u8,
//! `use_counter_after` u16 (report), or `03` (press, no fields); grant = `session_id` (16), `hold`
//! i64, `price_per_unit` i64, `expires_at` u64, `use_counter` u16.
//!
//! A press is acknowledged by [`Record::Started`] when the server started a session (the terms
//! arrive with the answer, so the acknowledgement and the open session are one record: a power
//! loss cannot keep one without the other), by [`Record::Ack`] when it refused.
//!
//! Records `01`–`04` are the format of the polling firmware and are read unchanged, so an outbox
//! written before an upgrade (a legacy start still queued) is recovered and finished.
//!
//! Replay ([`Durable::apply`]) is also applied to every record as it is appended, so the state in
//! RAM is always what a recovery would rebuild.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use blepay_core::{Amount, KeyEpoch, SessionId, Units, UseCounter};

use crate::grant::Grant;

/// What a queued request does (kept next to its sealed frame to rebuild the session on recovery).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// The start button was pressed: start the session waiting on this machine, whatever it is.
    Press,
    /// Legacy (polling firmware): start the session of `grant`.
    Start {
        /// The grant being started (hold, price, expiry are needed after a reboot).
        grant: Grant,
    },
    /// Report `units` dispensed so far; `last` ends the session.
    Report {
        /// The session.
        session: SessionId,
        /// Cumulative units.
        units: Units,
        /// The final report.
        last: bool,
        /// The use counter after this report (bumped by a final report).
        use_counter: UseCounter,
    },
}

impl Op {
    /// The session this request is about.
    pub const fn session(&self) -> Option<SessionId> {
        match self {
            Self::Press => None,
            Self::Start { grant } => Some(grant.session),
            Self::Report { session, .. } => Some(*session),
        }
    }
}

/// A request waiting in the outbox: sealed once, retried with these exact bytes until answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its sequence number.
    pub seq: u32,
    /// What it does.
    pub op: Op,
    /// The sealed request frame.
    pub frame: Vec<u8>,
}

impl Entry {
    /// The request as it is sent (and re-sent, byte for byte) until answered.
    pub fn pending(&self) -> crate::Pending {
        crate::Pending {
            seq: self.seq,
            kind: match self.op {
                Op::Press => crate::machine::RequestKind::Press,
                Op::Start { .. } => crate::machine::RequestKind::Start,
                Op::Report { .. } => crate::machine::RequestKind::Report,
            },
            tag: crate::tag_of(&self.frame),
            frame: self.frame.clone(),
        }
    }
}

/// The session the durable state knows about (started or being started, not yet finally reported).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenSession {
    /// Its grant.
    pub grant: Grant,
    /// The server acknowledged the start.
    pub started: bool,
    /// Units in the last queued report.
    pub units: Units,
}

/// One record of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// Scalars: sequence numbers below `seq_high_water` may have been used; the use counter; the
    /// clock offset and whether it came from a server answer.
    State {
        /// Every sequence number used so far (polls included) is below this.
        seq_high_water: u32,
        /// The advert's use counter.
        use_counter: UseCounter,
        /// Server time minus local time.
        clock_offset: i64,
        /// `clock_offset` was taken from an authenticated answer.
        clock_synced: bool,
    },
    /// A request appended to the outbox before it is sent.
    Enqueue(Entry),
    /// The request `seq` got an authenticated answer; `refused` when the server refused it.
    Ack {
        /// The request answered.
        seq: u32,
        /// The answer carried an error code.
        refused: bool,
    },
    /// Snapshot of the open session (written by compaction).
    Session(OpenSession),
    /// The press `seq` was answered with a started session: acknowledges the press and opens the
    /// session (started) in one record.
    Started {
        /// The press answered.
        seq: u32,
        /// The started session's terms.
        grant: Grant,
    },
    /// A rotated device key installed from an answer's key update (docs/protocol.md §1.1): the
    /// key every later frame and advert is sealed with, and the one before it (answers to
    /// requests sealed before the install are tagged with that). The latest one wins.
    Key(KeyRecord),
    /// Counters kept for telemetry and for recognising an answer about a session already ended.
    /// Absolute values (a snapshot writes it last).
    Counters {
        /// Boots since manufacture (since the log was created).
        boot_count: u32,
        /// Units in all final reports queued so far.
        lifetime_units: u64,
        /// The session of the last final report queued.
        last_final: Option<SessionId>,
    },
}

const TAG_STATE: u8 = 1;
const TAG_ENQUEUE: u8 = 2;
const TAG_ACK: u8 = 3;
const TAG_SESSION: u8 = 4;
const TAG_STARTED: u8 = 5;
const TAG_COUNTERS: u8 = 6;
const TAG_KEY: u8 = 7;
const OP_START: u8 = 1;
const OP_REPORT: u8 = 2;
const OP_PRESS: u8 = 3;

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.array::<1>()?[0])
    }
    fn bool(&mut self) -> Option<bool> {
        match self.u8()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.array()?))
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_be_bytes(self.array()?))
    }
    fn grant(&mut self) -> Option<Grant> {
        let session = SessionId::from_bytes(self.array()?);
        let hold = Amount::positive(self.i64()?).ok()?;
        let price_per_unit = Amount::positive(self.i64()?).ok()?;
        let expires_at = self.u64()?;
        let use_counter = UseCounter::new(self.u16()?);
        Some(Grant {
            session,
            hold,
            price_per_unit,
            expires_at,
            use_counter,
        })
    }
}

fn put_grant(out: &mut Vec<u8>, g: &Grant) {
    out.extend_from_slice(g.session.as_bytes());
    out.extend_from_slice(&g.hold.minor().to_be_bytes());
    out.extend_from_slice(&g.price_per_unit.minor().to_be_bytes());
    out.extend_from_slice(&g.expires_at.to_be_bytes());
    out.extend_from_slice(&g.use_counter.get().to_be_bytes());
}

impl Record {
    /// The record's payload bytes. Frames longer than 65535 bytes cannot occur (the protocol caps
    /// them at 1024); their length is truncated and the decoder would refuse them.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Self::State {
                seq_high_water,
                use_counter,
                clock_offset,
                clock_synced,
            } => {
                out.push(TAG_STATE);
                out.extend_from_slice(&seq_high_water.to_be_bytes());
                out.extend_from_slice(&use_counter.get().to_be_bytes());
                out.extend_from_slice(&clock_offset.to_be_bytes());
                out.push(u8::from(*clock_synced));
            }
            Self::Enqueue(e) => {
                out.push(TAG_ENQUEUE);
                out.extend_from_slice(&e.seq.to_be_bytes());
                match &e.op {
                    Op::Press => out.push(OP_PRESS),
                    Op::Start { grant } => {
                        out.push(OP_START);
                        put_grant(&mut out, grant);
                    }
                    Op::Report {
                        session,
                        units,
                        last,
                        use_counter,
                    } => {
                        out.push(OP_REPORT);
                        out.extend_from_slice(session.as_bytes());
                        out.extend_from_slice(&units.get().to_be_bytes());
                        out.push(u8::from(*last));
                        out.extend_from_slice(&use_counter.get().to_be_bytes());
                    }
                }
                let len = u16::try_from(e.frame.len()).unwrap_or(u16::MAX);
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&e.frame);
            }
            Self::Ack { seq, refused } => {
                out.push(TAG_ACK);
                out.extend_from_slice(&seq.to_be_bytes());
                out.push(u8::from(*refused));
            }
            Self::Session(s) => {
                out.push(TAG_SESSION);
                put_grant(&mut out, &s.grant);
                out.push(u8::from(s.started));
                out.extend_from_slice(&s.units.get().to_be_bytes());
            }
            Self::Started { seq, grant } => {
                out.push(TAG_STARTED);
                out.extend_from_slice(&seq.to_be_bytes());
                put_grant(&mut out, grant);
            }
            Self::Key(k) => {
                out.push(TAG_KEY);
                out.extend_from_slice(&k.epoch.get().to_be_bytes());
                out.extend_from_slice(&k.key);
                out.extend_from_slice(&k.previous);
            }
            Self::Counters {
                boot_count,
                lifetime_units,
                last_final,
            } => {
                out.push(TAG_COUNTERS);
                out.extend_from_slice(&boot_count.to_be_bytes());
                out.extend_from_slice(&lifetime_units.to_be_bytes());
                out.extend_from_slice(&last_final.map_or([0; 16], SessionId::to_bytes));
            }
        }
        out
    }

    /// Parse a record payload; `None` for anything that is not exactly one valid record. Never
    /// panics, whatever the bytes.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let mut c = Cursor(bytes);
        let record = match c.u8()? {
            TAG_STATE => Self::State {
                seq_high_water: c.u32()?,
                use_counter: UseCounter::new(c.u16()?),
                clock_offset: c.i64()?,
                clock_synced: c.bool()?,
            },
            TAG_ENQUEUE => {
                let seq = c.u32()?;
                let op = match c.u8()? {
                    OP_PRESS => Op::Press,
                    OP_START => Op::Start { grant: c.grant()? },
                    OP_REPORT => Op::Report {
                        session: SessionId::from_bytes(c.array()?),
                        units: Units::new(c.u64()?),
                        last: c.bool()?,
                        use_counter: UseCounter::new(c.u16()?),
                    },
                    _ => return None,
                };
                let len = usize::from(c.u16()?);
                let frame = c.take(len)?.to_vec();
                Self::Enqueue(Entry { seq, op, frame })
            }
            TAG_ACK => Self::Ack {
                seq: c.u32()?,
                refused: c.bool()?,
            },
            TAG_SESSION => Self::Session(OpenSession {
                grant: c.grant()?,
                started: c.bool()?,
                units: Units::new(c.u64()?),
            }),
            TAG_STARTED => Self::Started {
                seq: c.u32()?,
                grant: c.grant()?,
            },
            TAG_KEY => Self::Key(KeyRecord {
                epoch: KeyEpoch::new(c.u32()?),
                key: c.array()?,
                previous: c.array()?,
            }),
            TAG_COUNTERS => Self::Counters {
                boot_count: c.u32()?,
                lifetime_units: c.u64()?,
                last_final: {
                    let id: [u8; 16] = c.array()?;
                    (id != [0; 16]).then(|| SessionId::from_bytes(id))
                },
            },
            _ => return None,
        };
        c.0.is_empty().then_some(record)
    }
}

/// An installed device key (journal [`Record::Key`]). Its `Debug` never prints the keys.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// The installed key's epoch.
    pub epoch: KeyEpoch,
    /// The installed key.
    pub key: [u8; 32],
    /// The key it replaced.
    pub previous: [u8; 32],
}

impl core::fmt::Debug for KeyRecord {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("KeyRecord")
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

/// The state the log describes: what survives a power loss.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Durable {
    /// Sequence numbers below this may have been used; the next one is at least this after a
    /// reboot.
    pub seq_high_water: u32,
    /// The advert's use counter.
    pub use_counter: UseCounter,
    /// Last persisted clock offset.
    pub clock_offset: i64,
    /// `clock_offset` came from a server answer.
    pub clock_synced: bool,
    /// The session started or being started and not yet finally reported.
    pub open: Option<OpenSession>,
    /// Unacknowledged requests, oldest first.
    pub queue: VecDeque<Entry>,
    /// Boots since the log was created (bumped by `Engine::open`).
    pub boot_count: u32,
    /// Units in all final reports queued so far.
    pub lifetime_units: u64,
    /// The session of the last final report queued (acknowledged or not).
    pub last_final: Option<SessionId>,
    /// The device key installed over the air, if any (else the provisioned one is used).
    pub key: Option<KeyRecord>,
}

impl Default for Durable {
    fn default() -> Self {
        Self {
            seq_high_water: 0,
            use_counter: UseCounter::new(0),
            clock_offset: 0,
            clock_synced: false,
            open: None,
            queue: VecDeque::new(),
            boot_count: 0,
            lifetime_units: 0,
            last_final: None,
            key: None,
        }
    }
}

impl Durable {
    /// Apply one record (in log order).
    pub fn apply(&mut self, record: &Record) {
        match record {
            Record::Key(k) => {
                if self.key.as_ref().is_none_or(|have| k.epoch > have.epoch) {
                    self.key = Some(k.clone());
                }
            }
            Record::State {
                seq_high_water,
                use_counter,
                clock_offset,
                clock_synced,
            } => {
                self.seq_high_water = self.seq_high_water.max(*seq_high_water);
                self.use_counter = *use_counter;
                self.clock_offset = *clock_offset;
                self.clock_synced = *clock_synced;
            }
            Record::Enqueue(e) => {
                self.seq_high_water = self.seq_high_water.max(e.seq.saturating_add(1));
                // A seq is only ever enqueued once; a duplicate (impossible by construction) is
                // kept out so a retry can never send two different frames with one seq.
                if self.queue.iter().any(|q| q.seq == e.seq) {
                    return;
                }
                match &e.op {
                    Op::Press => {}
                    Op::Start { grant } => {
                        self.open = Some(OpenSession {
                            grant: grant.clone(),
                            started: false,
                            units: Units::ZERO,
                        });
                    }
                    Op::Report {
                        session,
                        units,
                        last,
                        use_counter,
                    } => {
                        if *last {
                            if self
                                .open
                                .as_ref()
                                .is_some_and(|o| o.grant.session == *session)
                            {
                                self.open = None;
                            }
                            self.use_counter = *use_counter;
                            self.lifetime_units = self.lifetime_units.saturating_add(units.get());
                            self.last_final = Some(*session);
                        } else if let Some(o) =
                            self.open.as_mut().filter(|o| o.grant.session == *session)
                        {
                            o.units = *units;
                        }
                    }
                }
                self.queue.push_back(e.clone());
            }
            Record::Ack { seq, refused } => {
                let Some(pos) = self.queue.iter().position(|q| q.seq == *seq) else {
                    return;
                };
                let Some(entry) = self.queue.remove(pos) else {
                    return;
                };
                if let Op::Start { grant } = &entry.op {
                    if self
                        .open
                        .as_ref()
                        .is_some_and(|o| o.grant.session == grant.session)
                    {
                        if *refused {
                            self.open = None;
                        } else if let Some(o) = self.open.as_mut() {
                            o.started = true;
                        }
                    }
                }
            }
            Record::Session(s) => self.open = Some(s.clone()),
            Record::Started { seq, grant } => {
                let Some(pos) = self.queue.iter().position(|q| q.seq == *seq) else {
                    return;
                };
                self.queue.remove(pos);
                self.open = Some(OpenSession {
                    grant: grant.clone(),
                    started: true,
                    units: Units::ZERO,
                });
            }
            Record::Counters {
                boot_count,
                lifetime_units,
                last_final,
            } => {
                self.boot_count = *boot_count;
                self.lifetime_units = *lifetime_units;
                self.last_final = *last_final;
            }
        }
    }

    /// The counters as a record.
    pub const fn counters(&self) -> Record {
        Record::Counters {
            boot_count: self.boot_count,
            lifetime_units: self.lifetime_units,
            last_final: self.last_final,
        }
    }

    /// The records that rebuild this state from an empty log (for compaction).
    pub fn snapshot(&self) -> Vec<Record> {
        let mut out = Vec::with_capacity(self.queue.len() + 3);
        // First: the installed key outlives every compaction.
        if let Some(k) = &self.key {
            out.push(Record::Key(k.clone()));
        }
        out.push(Record::State {
            seq_high_water: self.seq_high_water,
            use_counter: self.use_counter,
            clock_offset: self.clock_offset,
            clock_synced: self.clock_synced,
        });
        if let Some(open) = &self.open {
            out.push(Record::Session(open.clone()));
        }
        out.extend(self.queue.iter().cloned().map(Record::Enqueue));
        // Last: replaying the queued final reports above adds their units again; this sets the
        // counters back to their true values.
        out.push(self.counters());
        out
    }
}
