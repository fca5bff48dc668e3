//! A connection handle (`ConnId`, C's `c->bufev`) never names another
//! connection: not after its server stopped and another one started in the
//! same process (Rust and C), not after its slot was reused. Generation
//! wrap-around is checked by the unit test
//! `a_slot_whose_generations_are_used_up_is_retired`.

mod common;
use common::*;

use std::io::Read;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mario::{ConnId, Server};

#[test]
fn c_handles_of_a_stopped_server_or_a_closed_connection_are_refused() {
    ensure_built();
    let out = Command::new(root().join("target/ctests/restart"))
        .env("ASAN_OPTIONS", ASAN_OPTIONS)
        .env("UBSAN_OPTIONS", UBSAN_OPTIONS)
        .output()
        .expect("run restart");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("OK"),
        "restart: {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert!(unexpected_log_lines(&stdout, &stderr).is_empty(), "{stderr}");
}

/// Starts a one-worker server recording (id, slot) of each connection.
fn server(ids: Arc<Mutex<Vec<(ConnId, u32)>>>) -> Running {
    Running::start(
        Server::builder()
            .workers(1)
            .read_timeout(0)
            .stx(STX)
            .on_connect(move |c, _| {
                ids.lock().unwrap().push((c.id(), c.slot()));
                Ok(())
            }),
    )
}

#[test]
fn rust_ids_of_a_stopped_server_never_reach_the_next_one() {
    let ids: Arc<Mutex<Vec<(ConnId, u32)>>> = Arc::default();
    let a = server(ids.clone());
    let _ca = a.connect();
    assert!(wait_for(Duration::from_secs(5), || ids.lock().unwrap().len() == 1));
    let (id_a, slot_a) = ids.lock().unwrap()[0];
    let a_alive = a.server.clone();
    a.stop();
    assert!(!mario::send_to(id_a, b"x"), "a stopped server's id accepted");
    // Server A is still alive (we hold it); B gets another number.
    let b = server(ids.clone());
    let mut cb = b.connect();
    assert!(wait_for(Duration::from_secs(5), || ids.lock().unwrap().len() == 2));
    let (id_b, slot_b) = ids.lock().unwrap()[1];
    assert_eq!(slot_b, slot_a, "same worker, same slot");
    assert_ne!(id_b, id_a);
    assert!(!mario::send_to(id_a, &frame(STX, 1, b"stale")));
    assert!(
        !mario::close_id(id_a, 0x0101),
        "a stopped server's id closed something"
    );
    drop(a_alive);
    assert!(
        !mario::send_to(id_a, &frame(STX, 1, b"stale")),
        "a dropped server's id accepted"
    );
    assert!(mario::send_to(id_b, &frame(STX, 1, b"own")));
    let mut got = vec![0u8; 11];
    cb.read_exact(&mut got).unwrap();
    assert_eq!(got, frame(STX, 1, b"own"), "only B's own bytes reach B's client");
    b.stop();
}
