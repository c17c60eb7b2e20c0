//! End-to-end tests: the real `shop-auth-agent` binary against loopback
//! stand-ins for the partners, in temporary folders, over real Unix sockets.
//! One test binary (ripgrep's layout); modules by concern.

mod util;

mod abuse_e2e;
mod agent_e2e;
mod cli_e2e;
mod clients_e2e;
mod clock_e2e;
mod crash_e2e;
mod disk_e2e;
mod examples_e2e;
mod faults_e2e;
mod fleet_sim;
mod lifecycle_sim;
mod metrics_e2e;
mod packaging_e2e;
mod partners_e2e;
mod powercut_e2e;
mod store_e2e;
