mod common;
use common::*;
use std::io::Write;

#[test]
fn testsrv_echo_and_close_events() {
    let p = Proc::testsrv(&[("TS_STX", "8eb69af7")]);
    let mut c = connect(p.port);
    let (serial, _, _, _) = info(&mut c, STX);
    c.write_all(&frame(STX, ID_ECHO, b"hello")).unwrap();
    let (h, b) = read_frame(&mut c).unwrap();
    assert_eq!((h.akg_id, b.as_slice()), (ID_ECHO, &b"hello"[..]));
    drop(c);
    assert_eq!(
        p.wait_close_event(serial, std::time::Duration::from_secs(2)),
        Some((0xfffe, 2))
    );
    let s = p.stop_clean();
    assert_eq!(summary(&s.stdout, "violations"), 0);
}
