//! What the server spends: CPU time by thread, bytes written to storage, and the size of the
//! SQLite database — read from Linux's `/proc` around a phase.
//!
//! **CPU.** The bench's clients and the server share one process, so the server runs on a
//! runtime of its own (threads named [`SERVER_THREAD`], see `servers.rs`; the store is opened
//! inside it, so a thread the store starts inherits that name unless it names itself). The
//! clients run on the command's `#[tokio::main]` runtime (threads `tokio-rt-worker`) and the main
//! thread. **Server CPU = the process's CPU time (`/proc/self/stat`, exited threads
//! included) − the CPU time of the client threads** (`/proc/self/task/*/stat`, per thread id):
//! whatever is not a client is counted against the server (the hello-world server too, which is
//! idle outside its own phase). Times are in clock ticks (`AT_CLKTCK`, 100 Hz on Linux): over a
//! phase of seconds the error is a fraction of a percent.
//!
//! **Bytes written.** `write_bytes` of `/proc/self/io`: what the process made the kernel send to
//! the storage layer (page-granular: rewriting a page already dirty is not counted again; with
//! `synchronous=FULL` every commit's WAL pages are written out). The clients write no files, so it
//! is the server's (SQLite's WAL, checkpoints into the database file, nothing else).
//!
//! **Storage.** The database's pages in use (page count − free pages, × page size) after a
//! `PRAGMA wal_checkpoint(TRUNCATE)` run on a second connection between phases (so the WAL is
//! folded in and empty): the bytes at rest.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The name of the server runtime's threads (at most 15 bytes: Linux truncates `comm`).
pub(super) const SERVER_THREAD: &str = "blepay-server";

/// The clients' threads: the command's `#[tokio::main]` runtime (tokio names its threads
/// `tokio-rt-worker`, `tokio-runtime-worker` in older releases) and the main thread.
const CLIENT_THREAD_PREFIX: &str = "tokio-";

/// One reading of the process.
#[derive(Debug, Clone)]
pub(super) struct Usage {
    at: Instant,
    process_ticks: Ticks,
    /// CPU ticks of each live client thread, by thread id.
    client_ticks: HashMap<u64, Ticks>,
    write_bytes: u64,
    ticks_per_sec: u64,
}

/// CPU time in clock ticks: in user space and in the kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Ticks {
    user: u64,
    sys: u64,
}

impl Ticks {
    const fn total(self) -> u64 {
        self.user + self.sys
    }

    const fn minus(self, earlier: Self) -> Self {
        Self {
            user: self.user.saturating_sub(earlier.user),
            sys: self.sys.saturating_sub(earlier.sys),
        }
    }

    const fn plus(self, other: Self) -> Self {
        Self {
            user: self.user + other.user,
            sys: self.sys + other.sys,
        }
    }
}

/// What the process spent between two readings.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Cost {
    pub(super) wall_secs: f64,
    pub(super) process_cpu_secs: f64,
    /// The process minus the client threads.
    pub(super) server_cpu_secs: f64,
    /// The part of `server_cpu_secs` spent in the kernel (system calls: sockets, `write`,
    /// `fsync`).
    pub(super) server_sys_secs: f64,
    pub(super) write_bytes: u64,
}

impl Cost {
    pub(super) fn add(&mut self, other: &Self) {
        self.wall_secs += other.wall_secs;
        self.process_cpu_secs += other.process_cpu_secs;
        self.server_cpu_secs += other.server_cpu_secs;
        self.server_sys_secs += other.server_sys_secs;
        self.write_bytes += other.write_bytes;
    }

    /// The server's CPU cores in use on average (CPU-seconds per second).
    pub(super) fn server_cores(&self) -> f64 {
        if self.wall_secs > 0.0 {
            self.server_cpu_secs / self.wall_secs
        } else {
            0.0
        }
    }
}

impl Usage {
    /// Read the process now; `None` where `/proc` is not Linux's.
    pub(super) fn read() -> Option<Self> {
        let at = Instant::now();
        let process_ticks = stat_ticks(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
        let main = u64::from(std::process::id());
        let mut client_ticks = HashMap::new();
        for entry in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
            let Some(tid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            let dir = entry.path();
            // A thread may exit between the listing and these reads: skip it.
            let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
                continue;
            };
            let Some(ticks) = std::fs::read_to_string(dir.join("stat"))
                .ok()
                .and_then(|s| stat_ticks(&s))
            else {
                continue;
            };
            let comm = comm.trim_end();
            if tid == main || comm.starts_with(CLIENT_THREAD_PREFIX) {
                client_ticks.insert(tid, ticks);
            }
        }
        let write_bytes = std::fs::read_to_string("/proc/self/io")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("write_bytes:"))
            .and_then(|v| v.trim().parse().ok())?;
        Some(Self {
            at,
            process_ticks,
            client_ticks,
            write_bytes,
            ticks_per_sec: clock_ticks_per_sec(),
        })
    }

    /// What was spent from `earlier` to this reading. A client thread that exited in between is
    /// not subtracted (its last stretch counts against the server: the conservative side).
    #[allow(clippy::cast_precision_loss)]
    pub(super) fn since(&self, earlier: &Self) -> Cost {
        let per_thread = |now: &HashMap<u64, Ticks>, then: &HashMap<u64, Ticks>| -> Ticks {
            now.iter()
                .map(|(tid, t)| t.minus(then.get(tid).copied().unwrap_or_default()))
                .fold(Ticks::default(), Ticks::plus)
        };
        let hz = self.ticks_per_sec.max(1) as f64;
        let process = self.process_ticks.minus(earlier.process_ticks);
        let client = per_thread(&self.client_ticks, &earlier.client_ticks);
        let server = process.minus(client);
        Cost {
            wall_secs: self.at.duration_since(earlier.at).as_secs_f64(),
            process_cpu_secs: process.total() as f64 / hz,
            server_cpu_secs: server.total() as f64 / hz,
            server_sys_secs: server.sys as f64 / hz,
            write_bytes: self.write_bytes.saturating_sub(earlier.write_bytes),
        }
    }
}

/// utime and stime of a `/proc/.../stat` line (fields 14 and 15; the command name in parentheses
/// may hold spaces, so fields are counted after its closing parenthesis).
fn stat_ticks(stat: &str) -> Option<Ticks> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let sys: u64 = fields.next()?.parse().ok()?;
    Some(Ticks { user, sys })
}

/// `AT_CLKTCK` from the process's auxiliary vector (pairs of native-endian words), else 100.
fn clock_ticks_per_sec() -> u64 {
    const AT_CLKTCK: u64 = 17;
    let Ok(auxv) = std::fs::read("/proc/self/auxv") else {
        return 100;
    };
    let words: Vec<u64> = auxv
        .chunks_exact(8)
        .filter_map(|c| c.try_into().ok().map(u64::from_ne_bytes))
        .collect();
    words
        .chunks_exact(2)
        .find(|p| p.first() == Some(&AT_CLKTCK))
        .and_then(|p| p.get(1).copied())
        .filter(|&hz| hz > 0)
        .unwrap_or(100)
}

/// The SQLite database's bytes at rest: its size after folding the WAL into it (a TRUNCATE
/// checkpoint on a connection of our own; the server's connection is not touched).
///
/// # Errors
/// When the file cannot be opened or checkpointed.
pub(super) async fn database_bytes(path: &Path) -> anyhow::Result<u64> {
    let path: PathBuf = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let conn = rusqlite::Connection::open(&path)?;
        conn.busy_timeout(std::time::Duration::from_secs(30))?;
        // (busy, WAL frames, frames checkpointed); busy = 1 when a reader kept it from finishing,
        // or the store's own checkpointer was running one at that moment: try again a little.
        let mut busy: i64 = 1;
        for _ in 0..100 {
            busy = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
            if busy == 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        if busy != 0 {
            anyhow::bail!("the checkpoint of {} could not finish", path.display());
        }
        let page_size: u64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let pages: u64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        let free: u64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
        Ok(page_size * pages.saturating_sub(free))
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_gives_utime_and_stime_even_with_parentheses_in_the_name() {
        // Arrange: pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt
        // cmajflt utime stime ...
        let line = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 1 0";
        // Act / Assert
        assert_eq!(stat_ticks(line), Some(Ticks { user: 7, sys: 5 }));
    }

    #[test]
    fn this_process_can_be_read() {
        let a = Usage::read().expect("Linux /proc");
        let b = Usage::read().expect("Linux /proc");
        let c = b.since(&a);
        assert!(c.server_cpu_secs <= c.process_cpu_secs);
        assert!(c.server_sys_secs <= c.server_cpu_secs);
        assert!(c.wall_secs >= 0.0);
    }
}
