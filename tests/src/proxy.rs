//! A fault-injecting TCP proxy on loopback: it forwards connections to the server and drops a
//! share of them, either before forwarding anything, or — the nasty case — after the request
//! reached the server and its answer started coming back, which the client then never gets.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ProxyStats {
    pub passed: u32,
    /// Closed before anything reached the server.
    pub dropped_before: u32,
    /// Closed after the server answered, before the answer reached the client.
    pub dropped_after: u32,
}

#[derive(Debug)]
pub struct Proxy {
    /// `http://127.0.0.1:PORT`.
    pub address: String,
    pub stats: Arc<Mutex<ProxyStats>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Clone, Copy)]
enum Fate {
    Pass,
    DropBefore,
    DropAfter,
}

impl Proxy {
    /// Forward to `upstream`, dropping `drop_percent` % of connections (half before, half after),
    /// decided by a deterministic generator seeded with `seed`.
    pub fn start(upstream: SocketAddr, drop_percent: u64, seed: u64) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let stats = Arc::new(Mutex::new(ProxyStats::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (stats.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut rng = seed.max(1);
            while !sp.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        // xorshift64
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        let roll = rng % 100;
                        let fate = if roll >= drop_percent {
                            Fate::Pass
                        } else if roll % 2 == 0 {
                            Fate::DropBefore
                        } else {
                            Fate::DropAfter
                        };
                        let st = st.clone();
                        std::thread::spawn(move || handle(client, upstream, fate, &st));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Self {
            address,
            stats,
            stop,
            thread: Some(thread),
        }
    }

    pub fn stats(&self) -> ProxyStats {
        *self.stats.lock().unwrap()
    }
}

fn handle(client: TcpStream, upstream: SocketAddr, fate: Fate, stats: &Mutex<ProxyStats>) {
    let _ = client.set_nonblocking(false);
    if let Fate::DropBefore = fate {
        stats.lock().unwrap().dropped_before += 1;
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
    let Ok(server) = TcpStream::connect(upstream) else {
        return;
    };
    let (Ok(mut c_read), Ok(mut s_write)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut c_read, &mut s_write);
        let _ = s_write.shutdown(Shutdown::Write);
    });
    let (mut s_read, mut c_write) = (server, client);
    if let Fate::DropAfter = fate {
        // Wait for the server's first answer byte (it has executed the request), then cut.
        let mut byte = [0u8; 1];
        let _ = s_read.read(&mut byte);
        stats.lock().unwrap().dropped_after += 1;
        let _ = c_write.shutdown(Shutdown::Both);
        let _ = s_read.shutdown(Shutdown::Both);
    } else {
        let _ = std::io::copy(&mut s_read, &mut c_write);
        let _ = c_write.flush();
        let _ = c_write.shutdown(Shutdown::Both);
        stats.lock().unwrap().passed += 1;
    }
    let _ = up.join();
}
