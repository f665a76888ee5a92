//! Integration tests: the real server over HTTP, on SQLite and PostgreSQL.

mod fake_provider;
mod helpers;
mod smtp_server;

mod auth;
mod bookkeeping;
mod config;
mod delivery;
mod delivery_truth;
mod errors;
mod isolation;
mod messages;
mod ops;
mod queue;
mod retention;
mod rich;
mod routing;
mod templates;
mod walk;
