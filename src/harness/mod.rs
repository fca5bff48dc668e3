//! Test and benchmark harnesses, compiled only with the cargo feature
//! `harness` (the fuzz targets, the corpus replay test, the `idle_table`
//! benchmark): never part of the shipped `libmario.a`. They drive the
//! library's real code paths, not copies of them.
//!
//! * [`fuzzing`]: the fuzz harnesses `frames` (the input path) and `ops`
//!   (a real server against a model).
//! * [`sim`]: a worker's connection table without sockets.
//!
//! Uses: api, server, service, conn, proto, sys.

pub mod fuzzing;
pub mod sim;
