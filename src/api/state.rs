//! Where a connection's state lives (see
//! [`ServerBuilder::state`](crate::ServerBuilder::state)): a `Box<S>` whose
//! raw pointer is the record's `user` field (C's `c->user`, which nothing
//! else of a Rust server uses). The one place of the Rust API that turns
//! that pointer back into a reference or a box.
//!
//! The life of a state, on the connection's worker thread:
//!
//! * [`put`] once, when `init` returns (before `on_connect`);
//! * [`with`] for each handler call on the connection (packet, frame,
//!   connect, close), never two at once: the worker runs no callback on a
//!   connection inside another callback on the same connection when the
//!   service makes `&mut Conn` of it (`Ctx::callback` asserts it; closes of
//!   a held connection, `Conn::close` included, are put off until no
//!   callback runs);
//! * [`take`] once, in the close callback, which runs once per connection
//!   (and is the last callback on it): the box is dropped by the caller
//!   right after `on_close`.
//!
//! A zero-sized `S` allocates nothing (`Box` of a ZST is a dangling,
//! non-null pointer). A connection whose `init` panicked has no state
//! (`user` stays null): it gets no handler that needs one.
//!
//! Uses: conn (the record).

use crate::conn::Conn;

/// Stores `state` as the connection's state. `conn` has none yet.
pub(super) fn put<S>(conn: &mut Conn, state: S) {
    debug_assert!(conn.user.is_null(), "a connection's state is set once");
    conn.user = Box::into_raw(Box::new(state)).cast();
}

/// Runs `f` with the connection and its state; `None` (and `f` not run) if
/// it has none.
pub(super) fn with<S, R>(conn: &mut Conn, f: impl FnOnce(&mut Conn, &mut S) -> R) -> Option<R> {
    let p = conn.user.cast::<S>();
    if p.is_null() {
        return None;
    }
    // SAFETY: a non-null `user` of a connection of a `Handlers<S>` server
    // is the pointer `put` made with `Box::into_raw` of a `Box<S>` (the
    // record's `user` is cleared when a slot opens, and nothing else of
    // the Rust API writes it), not yet taken back by `take` (which nulls
    // it). The box is its own allocation, apart from the record, so this
    // `&mut S` and the `&mut Conn` do not overlap. No other reference to
    // the state exists while `f` runs: states are reached only here, on
    // the connection's worker, inside a callback on this connection, and
    // the worker never nests two callbacks on one held connection (see the
    // module docs).
    let state = unsafe { &mut *p };
    Some(f(conn, state))
}

/// Takes the connection's state back (`None` if it has none); `user` is
/// null afterwards, so no handler can reach the state again.
pub(super) fn take<S>(conn: &mut Conn) -> Option<Box<S>> {
    let p = std::mem::replace(&mut conn.user, std::ptr::null_mut()).cast::<S>();
    if p.is_null() {
        return None;
    }
    // SAFETY: as in `with`, `p` came from `Box::into_raw` of a `Box<S>` in
    // `put`; `user` was nulled above, so the box is rebuilt exactly once,
    // and no reference made by `with` is alive (the close callback is not
    // nested in another callback on this connection).
    Some(unsafe { Box::from_raw(p) })
}
