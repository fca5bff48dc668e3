//! Connections as data: the record C and Rust handlers see ([`Conn`]), its
//! id ([`ConnId`]), one worker's table of them (slab, free list,
//! generations, timing wheel) and the input path that turns bytes read into
//! dispatched packets. Nothing here runs an event loop or calls the
//! application except through the callbacks it is given.
//!
//! Uses: records, proto, wheel, sys.

pub(crate) mod id;
pub(crate) mod input;
pub(crate) mod record;
pub(crate) mod table;

pub use id::ConnId;
pub use record::Conn;
