//! The `courierx` binary's library half: configuration, start-up and shutdown, admin commands and
//! the benchmark, so integration tests can run the real server in-process.

pub mod admin;
pub mod app;
pub mod config;
