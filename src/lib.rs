//! shop-auth-agent: keeps partner API access tokens fresh and hands them to
//! point-of-sale software over a Unix socket. `main.rs` only sets up logging
//! and calls [`cli::main`]; everything else lives here so tests can drive it.
//!
//! Data flows one way: [`config`] → [`providers`] → [`scheduler`] (the only
//! writer of tokens, persisting through [`store`]) → [`server`] (reads).

pub mod agent;
pub mod base64;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod dev;
pub mod durable;
pub mod http;
pub mod jwt;
pub mod lifecycle;
pub mod metrics;
pub mod notify;
pub mod paths;
pub mod protocol;
pub mod providers;
pub mod rand;
pub mod scheduler;
pub mod secret;
pub mod server;

pub mod store;
pub mod sys;
pub mod timefmt;
pub mod token;
pub mod tokenfile;
