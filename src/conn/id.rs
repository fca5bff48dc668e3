//! [`ConnId`]: the name of one connection for its whole life, valid from
//! any thread.
//!
//! Uses: nothing of the crate.

/// A handle naming one connection for its whole life: which server, which
/// worker, which slot, and the slot's generation. It is what the C field
/// `CONN.bufev` holds (cast to a pointer), and what cross-thread commands
/// carry: a handle whose generation no longer matches its slot is stale and
/// is dropped, so a command can never reach the next client on that slot.
///
/// A handle never names another connection for the life of the process:
/// servers are numbered once per process (never reused), and a slot whose
/// generation would wrap is retired instead of reused.
///
/// Layout (bit 0 is always 1, so a handle is never a valid, aligned
/// pointer): bits 1..21 slot, 21..29 worker, 29..41 server, 41..64
/// generation.
///
/// Get one with [`Conn::id`](crate::Conn::id); use it from any thread with
/// [`send_to`](crate::send_to) and [`close_id`](crate::close_id). It is
/// `Copy`, `Hash` and `Send`: keep it in maps, hand it to other threads.
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::Mutex;
/// use mario::{Conn, ConnId, send_to};
///
/// /// Who is logged in: filled by a login handler, read by any thread.
/// static ONLINE: Mutex<Option<HashMap<String, ConnId>>> = Mutex::new(None);
///
/// fn logged_in(conn: &mut Conn, user: &str) {
///     ONLINE.lock().unwrap().get_or_insert_default().insert(user.to_string(), conn.id());
/// }
///
/// /// From any thread: false if the user is not online, or their
/// /// connection is gone (a stale id never reaches another client).
/// fn notify(user: &str, msg: &[u8]) -> bool {
///     let id = ONLINE.lock().unwrap().as_ref().and_then(|m| m.get(user).copied());
///     id.is_some_and(|id| send_to(id, msg))
/// }
///
/// assert!(!notify("nobody", b"hello"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId(pub(crate) u64);

/// Most slots one worker may have (the slot field's range).
pub(crate) const MAX_SLOTS: u32 = 1 << 20;
/// Most workers one server may have (the worker field's range).
pub(crate) const MAX_WORKERS: usize = 1 << 8;
/// Most servers one process may create in its life (the server field's
/// range; server numbers are never reused).
pub(crate) const MAX_SERVERS: usize = 1 << 12;
/// The generation field's range (23 bits); a slot is retired when its
/// generation reaches it.
pub(crate) const GEN_MASK: u32 = (1 << 23) - 1;

impl ConnId {
    /// The id of `slot` of `generation` on `worker` of `server`.
    pub(crate) fn new(server: usize, worker: usize, slot: u32, generation: u32) -> ConnId {
        debug_assert!(slot < MAX_SLOTS && worker < MAX_WORKERS && server < MAX_SERVERS);
        ConnId(
            1 | (u64::from(slot) << 1)
                | ((worker as u64) << 21)
                | ((server as u64) << 29)
                | (u64::from(generation & GEN_MASK) << 41),
        )
    }

    /// Decodes a raw handle value; `None` if it is not one of ours.
    pub(crate) fn from_raw(v: u64) -> Option<ConnId> {
        (v & 1 == 1).then_some(ConnId(v))
    }

    /// The slot inside the owning worker.
    pub(crate) fn slot(self) -> u32 {
        ((self.0 >> 1) & u64::from(MAX_SLOTS - 1)) as u32
    }
    /// The owning worker's index.
    pub(crate) fn worker(self) -> usize {
        ((self.0 >> 21) & (MAX_WORKERS as u64 - 1)) as usize
    }
    /// The server's process-wide number.
    pub(crate) fn server(self) -> usize {
        ((self.0 >> 29) & (MAX_SERVERS as u64 - 1)) as usize
    }
    /// The slot's generation when the connection opened (23 bits).
    pub(crate) fn generation(self) -> u32 {
        (self.0 >> 41) as u32 & GEN_MASK
    }
    /// The raw 64-bit value (as stored in `CONN.bufev`), e.g. to log a
    /// connection or to match it with what a C handler saw; odd, never 0.
    /// Example: [`ConnId`] (keeping ids).
    pub fn as_raw(self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_at_their_limits() {
        for (server, worker, slot, generation) in [
            (0, 0, 0, 0),
            (MAX_SERVERS - 1, MAX_WORKERS - 1, MAX_SLOTS - 1, GEN_MASK),
            (3, 7, 12345, 0x002b_cdef),
        ] {
            let id = ConnId::new(server, worker, slot, generation);
            assert_eq!(
                (id.server(), id.worker(), id.slot(), id.generation()),
                (server, worker, slot, generation)
            );
            assert_eq!(ConnId::from_raw(id.as_raw()), Some(id));
        }
        // The fields do not overlap: all ones in one leaves the others 0.
        let all = ConnId::new(MAX_SERVERS - 1, 0, 0, 0);
        assert_eq!((all.worker(), all.slot(), all.generation()), (0, 0, 0));
        let all = ConnId::new(0, MAX_WORKERS - 1, 0, 0);
        assert_eq!((all.server(), all.slot(), all.generation()), (0, 0, 0));
        // An even value (a pointer) is not an id.
        assert_eq!(ConnId::from_raw(0x1000), None);
    }
}
