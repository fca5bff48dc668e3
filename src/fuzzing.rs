//! Harnesses shared by the fuzz targets (`fuzz/`, nightly `cargo fuzz`) and
//! the corpus replay in the test suite (stable). Not part of the API.
