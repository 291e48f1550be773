//! The SIM800 AT transport against a simulated modem bridged to the real server on loopback,
//! with every fault the field has: ERROR, +CME ERROR, silence, +HTTPACTION 601/603, a dropped
//! bearer, power loss (before, during and after the request reached the server), a left-over
//! HTTP session and URC noise. After each, the session settles exactly once. The machine runs the
//! press flow: heartbeat (online), press → started, final report → settled.

use crate::support::machine::{Machine, assert_retries_are_byte_identical};
use crate::support::server::Server;
use crate::support::sim800::{Fault, HostPort, Sim, driver, request_head};
use blepay_core::SessionStatus;
use blepay_core::Units;
use blepay_device_client::at::AtError;
use blepay_device_client::transport::{DEVICE_PATH, Transport};
use blepay_device_client::{Identity, RefusalCode, Status, heartbeat, machine};
use blepay_proto::pb::v1 as pb;

type AtMachine =
    Machine<blepay_device_client::at::Sim800<HostPort, blepay_device_client::at::StdTimer>>;

const PRICE: i64 = 25;

/// A registered machine on a simulated modem, online (it sent one heartbeat).
fn arranged(http_left_open: bool) -> (Server, Sim, AtMachine) {
    let server = Server::start();
    let id: Identity = server.register(PRICE);
    let (sim, port) = Sim::start_with(http_left_open);
    let mut m = Machine::new(id, driver(port, &server.address));
    m.heartbeat();
    (server, sim, m)
}

/// Pay, press and report 3 units: `before_start` faults are injected before the press,
/// `before_report` before the final report. Asserts the session settled exactly once.
fn a_session_settles_once_despite(
    before_start: &[Fault],
    before_report: &[Fault],
) -> (Server, Sim, AtMachine) {
    // Arrange
    let (server, sim, mut m) = arranged(false);
    server.top_up("ida", 1000);
    let sid = server.pay("ida", &m.link.identity, 0, 200);

    // Act
    for f in before_start {
        sim.inject(f.clone());
    }
    let grant = m.press_started();
    assert_eq!((grant.session, grant.max_units()), (sid, Units::new(8)));
    assert_eq!(server.session(sid).status, pb::SessionStatus::Active as i32);
    for f in before_report {
        sim.inject(f.clone());
    }
    let (status, settled) = m.report(sid, 3, true);

    // Assert
    assert!(sim.faults_spent(), "a fault did not fire");
    assert_eq!(
        (status, &settled.body),
        (
            200,
            &machine::Answer::Session {
                status: Status::Known(SessionStatus::Settled),
                amount: 75
            }
        )
    );
    let s = server.session(sid);
    assert_eq!(
        (s.status, s.amount, s.units),
        (pb::SessionStatus::Settled as i32, 75, 3)
    );
    let w = server.wallet("ida");
    assert_eq!((w.available, w.held, w.spent), (925, 0, 75));
    assert!(server.audit().reconciles());
    assert_retries_are_byte_identical(&sim.forwarded());
    assert_retries_are_byte_identical(&m.sent);
    (server, sim, m)
}

#[test]
fn a_full_heartbeat_press_report_exchange_runs_through_the_modem_as_the_manual_gives_it() {
    let (server, sim, m) = a_session_settles_once_despite(&[], &[]);

    // Three operations (heartbeat, press, final report), one HTTP action each, no retry.
    assert_eq!(sim.forwarded().len(), 3);
    assert_eq!(m.transport.stats().tries, 3);
    let commands = sim.commands();
    let first: Vec<&str> = commands.iter().take(16).map(String::as_str).collect();
    assert_eq!(
        first,
        [
            "AT",
            "ATE0",
            "AT+HTTPTERM",
            "AT+SAPBR=2,1",
            "AT+SAPBR=3,1,\"Contype\",\"GPRS\"",
            "AT+SAPBR=3,1,\"APN\",\"internet\"",
            "AT+SAPBR=1,1",
            "AT+SAPBR=2,1",
            "AT+HTTPINIT",
            "AT+HTTPPARA=\"CID\",1",
            &format!("AT+HTTPPARA=\"URL\",\"{}/v1/device\"", server.address),
            "AT+HTTPPARA=\"CONTENT\",\"application/octet-stream\"",
            &format!("AT+HTTPDATA={},500", m.sent[0].len()),
            "AT+HTTPACTION=1",
            "AT+HTTPREAD",
            "AT+HTTPTERM",
        ]
    );
}

#[test]
fn an_error_reply_is_retried_and_the_session_settles_once() {
    let (_s, _sim, m) = a_session_settles_once_despite(
        &[Fault::Error("AT+HTTPPARA=\"URL\"")],
        &[Fault::Error("AT+HTTPACTION"), Fault::Error("AT+HTTPREAD")],
    );
    assert!(m.transport.stats().resyncs >= 3);
}

#[test]
fn a_cme_error_is_retried_and_the_session_settles_once() {
    a_session_settles_once_despite(
        &[Fault::Cme("AT+HTTPDATA", 3)],
        &[Fault::Cme("AT+HTTPINIT", 4)],
    );
}

#[test]
fn a_silent_modem_times_out_and_the_exchange_is_retried() {
    let (_s, _sim, m) = a_session_settles_once_despite(
        &[Fault::Silence("AT+HTTPDATA")],
        &[
            Fault::Silence("AT+HTTPACTION"),
            Fault::Silence("AT+HTTPREAD"),
        ],
    );
    assert!(m.transport.stats().resyncs >= 3);
}

#[test]
fn network_error_601_re_attaches_the_bearer_and_retries() {
    let (_s, _sim, m) = a_session_settles_once_despite(&[], &[Fault::ActionFails(601)]);
    // First attach plus one re-attach.
    assert_eq!(m.transport.stats().bearer_opens, 2);
}

#[test]
fn dns_error_603_re_attaches_the_bearer_and_retries() {
    let (_s, _sim, m) = a_session_settles_once_despite(&[Fault::ActionFails(603)], &[]);
    assert_eq!(m.transport.stats().bearer_opens, 2);
}

#[test]
fn an_answer_lost_after_the_server_executed_is_answered_again_from_the_saved_answer() {
    let (_s, sim, _m) = a_session_settles_once_despite(&[Fault::AnswerLost], &[Fault::AnswerLost]);
    // heartbeat, press twice, report twice: the retries reached the server with the same bytes.
    assert_eq!(sim.forwarded().len(), 5);
}

#[test]
fn a_dropped_bearer_is_noticed_and_re_attached() {
    let (_s, sim, m) = a_session_settles_once_despite(
        &[Fault::DropBearer("AT+HTTPACTION")],
        &[Fault::DropBearer("AT+HTTPINIT")],
    );
    let stats = m.transport.stats();
    assert_eq!(stats.bearer_drops_seen, 2);
    assert_eq!(stats.bearer_opens, 3);
    assert_eq!(
        sim.forwarded().len(),
        3,
        "a dropped bearer never reaches the server"
    );
}

#[test]
fn a_power_loss_before_the_request_is_survived() {
    let (_s, _sim, m) = a_session_settles_once_despite(&[Fault::PowerLoss("AT+HTTPINIT")], &[]);
    let stats = m.transport.stats();
    assert_eq!(stats.reboots_seen, 1);
    assert_eq!(
        stats.bearer_opens, 2,
        "the bearer is opened again after the reboot"
    );
}

#[test]
fn a_power_loss_mid_transfer_is_survived_and_the_server_runs_the_operation_once() {
    a_session_settles_once_despite(
        &[Fault::PowerLossDuringData],
        &[Fault::PowerLoss("AT+HTTPREAD")],
    );
}

#[test]
fn a_power_loss_after_the_server_executed_gets_the_saved_answer() {
    let (_s, sim, _m) = a_session_settles_once_despite(&[], &[Fault::PowerLossAfterForward]);
    assert_eq!(
        sim.forwarded().len(),
        4,
        "the final report reached the server twice, byte-identical"
    );
}

#[test]
fn an_http_session_left_open_is_closed_before_httpinit() {
    // Arrange: the controller rebooted, the modem did not: its HTTP session is still open.
    let (_server, sim, m) = arranged(true);

    // Assert: the first heartbeat went through, and the re-sync closed the old session.
    let commands = sim.commands();
    assert_eq!(commands[2], "AT+HTTPTERM");
    assert_eq!(m.transport.stats().tries, 1);
}

#[test]
fn an_httpinit_refused_because_a_session_is_open_is_repaired_with_httpterm() {
    // Arrange: a session left open *after* the driver synchronised (another task used HTTP).
    let (server, sim, mut m) = arranged(false);
    sim.inject(Fault::Error("AT+HTTPINIT"));

    // Act
    let (status, _) = m.exchange(&heartbeat(blepay_core::Telemetry::default()));

    // Assert: HTTPTERM + HTTPINIT inside the same try.
    assert_eq!(status, 200);
    assert_eq!(m.transport.stats().stale_http_sessions, 1);
    assert_eq!(m.transport.stats().tries, 2);
    drop(server);
}

#[test]
fn unsolicited_result_codes_between_replies_are_ignored() {
    let (_s, _sim, m) = a_session_settles_once_despite(
        &[
            Fault::Noise("AT+HTTPPARA=\"CID\""),
            Fault::Noise("AT+HTTPREAD"),
        ],
        &[Fault::Noise("AT+HTTPINIT"), Fault::Noise("AT+HTTPACTION")],
    );
    assert_eq!(m.transport.stats().tries, 3, "noise costs no retry");
}

#[test]
fn a_modem_that_stays_silent_is_a_clear_timeout_and_a_retry_of_the_same_frame_succeeds() {
    // Arrange: more silence than one post tries.
    let (server, sim, mut m) = arranged(false);
    for _ in 0..3 {
        sim.inject(Fault::Silence("AT+HTTPACTION"));
    }
    let p = m.seal(&heartbeat(blepay_core::Telemetry::default()));

    // Act
    let mut answer = Vec::new();
    let first = m.transport.post(DEVICE_PATH, &p.frame, &mut answer);
    let second = m.transport.post(DEVICE_PATH, &p.frame, &mut answer);

    // Assert
    assert_eq!(
        first,
        Err(AtError::Timeout {
            command: "AT+HTTPACTION=1"
        })
    );
    assert!(
        first
            .unwrap_err()
            .to_string()
            .contains("no answer to AT+HTTPACTION=1")
    );
    assert_eq!(second, Ok(200));
    assert!(m.link.identity.open(&p, &answer).is_ok());
    drop(server);
}

/// A one-shot HTTP server on loopback that answers `answer` with status 200 to whatever it gets;
/// returns its URL and the request it received.
fn echo_server(
    answer: impl Fn(&[u8]) -> Vec<u8> + Send + 'static,
) -> (String, std::thread::JoinHandle<Vec<u8>>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let t = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            let n = c.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                if got.len() >= end + 4 + len {
                    break;
                }
            }
        }
        let end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let body = answer(&got[end..]);
        let mut out =
            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes();
        out.extend(body);
        c.write_all(&out).unwrap();
        got
    });
    (url, t)
}

#[test]
fn binary_bodies_that_look_like_at_output_are_carried_byte_exact() {
    // Arrange: a server that answers with the request reversed, around AT-looking bytes.
    let tricky: Vec<u8> =
        b"\r\nOK\r\n+HTTPACTION: 1,200,9\r\nERROR\r\n\0\xff\r\n+HTTPREAD: 3\r\nDOWNLOAD\r\n"
            .to_vec();
    let (url, server) = echo_server(|body| {
        let mut answer = b"\r\nOK\r\n".to_vec();
        answer.extend(body.iter().rev());
        answer.extend_from_slice(b"\r\nERROR\r\n");
        answer
    });
    let (sim, port) = Sim::start();
    let mut at = driver(port, &url);

    // Act
    let mut answer = Vec::new();
    let status = at.post(DEVICE_PATH, &tricky, &mut answer);

    // Assert
    let mut expected = b"\r\nOK\r\n".to_vec();
    expected.extend(tricky.iter().rev());
    expected.extend_from_slice(b"\r\nERROR\r\n");
    assert_eq!(status, Ok(200));
    assert_eq!(answer, expected);
    assert_eq!(sim.forwarded(), vec![tricky.clone()]);
    let got = server.join().unwrap();
    let mut request = request_head(
        url.trim_start_matches("http://"),
        DEVICE_PATH,
        Some("application/octet-stream"),
        tricky.len(),
    )
    .into_bytes();
    request.extend_from_slice(&tricky);
    assert_eq!(got, request, "exactly what a SIM800 puts on TCP");
}

#[test]
fn the_modem_sends_the_sim800_header_set_and_counts_the_bytes_of_each_exchange() {
    // Arrange / Act: heartbeat, press, final report against the real server.
    let (server, sim, _m) = a_session_settles_once_despite(&[], &[]);

    // Assert: every request head is the SIM800's, in order, and each exchange was counted.
    let heads = sim.heads();
    assert_eq!(heads.len(), 3);
    let host = server.address.trim_start_matches("http://");
    for (head, body) in heads.iter().zip(sim.forwarded()) {
        assert_eq!(
            head,
            &request_head(
                host,
                DEVICE_PATH,
                Some("application/octet-stream"),
                body.len()
            )
        );
    }
    let bytes = sim.link_bytes();
    assert_eq!(bytes.exchanges.len(), 3);
    for (e, (head, body)) in bytes
        .exchanges
        .iter()
        .zip(heads.iter().zip(sim.forwarded()))
    {
        assert_eq!(e.sent, (head.len() + body.len()) as u64);
        assert!(e.received > 0 && e.received < 400, "{e:?}");
    }
    let cycle: u64 = bytes.exchanges[1..]
        .iter()
        .map(|e| e.sent + e.received)
        .sum();
    println!(
        "press + final report on TCP: {cycle} bytes; per exchange {:?}",
        bytes.exchanges
    );
    assert!(cycle < 1_000, "a short cycle above TCP: {cycle} bytes");
}

#[test]
fn a_press_with_no_session_waiting_is_refused_and_changes_nothing() {
    let (server, _sim, mut m) = arranged(false);
    server.top_up("ida", 1000);
    let (_, answer) = m.press();
    assert_eq!(answer.refusal_code(), Some(RefusalCode::NoSessionWaiting));
    let w = server.wallet("ida");
    assert_eq!((w.available, w.held, w.spent), (1000, 0, 0));
    // a payment after that is started by the next press
    let sid = server.pay("ida", &m.link.identity, 0, 200);
    assert_eq!(m.press_started().session, sid);
}

#[test]
fn the_link_status_is_read_locally_with_csq_and_sapbr() {
    let (_server, sim, mut m) = arranged(false);
    sim.set_rssi(23);
    let before = sim.forwarded().len();
    let status = m.transport.link_status();
    assert_eq!(
        status,
        blepay_device_client::transport::LinkStatus {
            attached: Some(true),
            signal_quality: 23
        }
    );
    assert_eq!(sim.forwarded().len(), before, "no data sent");
    let commands = sim.commands();
    assert_eq!(&commands[commands.len() - 2..], ["AT+CSQ", "AT+SAPBR=2,1"]);
    // a modem that dropped its bearer is not attached
    sim.inject(Fault::DropBearer("AT+CSQ"));
    assert_eq!(m.transport.link_status().attached, Some(false));
}
