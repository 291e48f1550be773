//! A minimal machine loop over any [`Transport`]: requests are sealed once and re-sent with the
//! same bytes until an authenticated answer arrives (docs/protocol.md §3.3).

use blepay_core::{SessionId, Units};
use blepay_device_client::grant::Grant;
use blepay_device_client::transport::{DEVICE_PATH, Transport};
use blepay_device_client::{Answer, Identity, Pending, Request, heartbeat, press, report};
use blepay_e2e::Link;

pub struct Machine<T> {
    /// Identity and sequence numbers, on the device client.
    pub link: Link,
    pub transport: T,
    /// Every frame handed to the transport, retries included.
    pub sent: Vec<Vec<u8>>,
    /// Transport errors seen, as text.
    pub errors: Vec<String>,
}

impl<T: Transport> Machine<T> {
    pub fn new(id: Identity, transport: T) -> Self {
        Self {
            link: Link::new(id),
            transport,
            sent: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// Seal the next request.
    pub fn seal(&mut self, body: &Request) -> Pending {
        self.link.seal(body)
    }

    /// One try: post the frame, open the answer.
    pub fn try_once(&mut self, p: &Pending) -> Result<(u16, Answer), String> {
        self.sent.push(p.frame.clone());
        let mut bytes = Vec::new();
        let status = self
            .transport
            .post(DEVICE_PATH, &p.frame, &mut bytes)
            .map_err(|e| format!("{e:?}"))?;
        let answer = self
            .link
            .identity
            .open(p, &bytes)
            .map_err(|e| format!("status {status}: {e}"))?;
        Ok((status, answer))
    }

    /// Post until answered (at most `tries` times).
    pub fn deliver(&mut self, p: &Pending, tries: usize) -> (u16, Answer) {
        for _ in 0..tries {
            match self.try_once(p) {
                Ok(r) => return r,
                Err(e) => self.errors.push(e),
            }
        }
        panic!(
            "seq {} not answered after {tries} tries: {:?}",
            p.seq, self.errors
        );
    }

    pub fn exchange(&mut self, body: &Request) -> (u16, Answer) {
        let p = self.seal(body);
        self.deliver(&p, 10)
    }

    /// A heartbeat (empty telemetry): the machine is online.
    pub fn heartbeat(&mut self) {
        let (status, a) = self.exchange(&heartbeat(blepay_core::Telemetry::default()));
        assert_eq!((status, a.refusal()), (200, None), "heartbeat");
    }

    /// The start button: the started session's terms, or the refusal.
    pub fn press(&mut self) -> (u16, Answer) {
        self.exchange(&press())
    }

    /// The start button with a session waiting: its terms.
    pub fn press_started(&mut self) -> Grant {
        let (status, a) = self.press();
        match a.body {
            blepay_device_client::machine::Answer::Started(Ok(g)) if status == 200 => g,
            other => panic!("press: {status} {other:?}"),
        }
    }

    pub fn report(&mut self, s: SessionId, units: u64, last: bool) -> (u16, Answer) {
        self.exchange(&report(s, Units::new(units), last))
    }
}

/// The sequence number inside a request frame.
pub fn seq_of(frame: &[u8]) -> u32 {
    u32::from_be_bytes(frame[9..13].try_into().unwrap())
}

/// Every retry of a sequence number carried the same bytes.
#[track_caller]
pub fn assert_retries_are_byte_identical(frames: &[Vec<u8>]) {
    let mut by_seq = std::collections::BTreeMap::<u32, &Vec<u8>>::new();
    for f in frames {
        let first = by_seq.entry(seq_of(f)).or_insert(f);
        assert_eq!(*first, f, "seq {} was sent with different bytes", seq_of(f));
    }
}
