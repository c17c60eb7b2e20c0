//! shop-auth-agent: keeps partner API access tokens fresh and hands them to
//! point-of-sale software over a Unix socket. `main.rs` only parses the
//! command line; everything else lives here so tests can drive it too.

pub mod http;
pub mod jwt;
pub mod providers;
pub mod rand;
pub mod secret;
pub mod standin;
pub mod timefmt;
