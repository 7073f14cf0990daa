//! The real control plane (`tests/control-plane/`, built from Go modules), one binary: the
//! emulator compared with it, rota's simulated nodes as its clients, and rota as shipped
//! (kubectl, helm, the coordinator binary) rolling through it, judged by the monitor.
//! `cargo test -p rota-tests --test real <module>::` runs one family.

mod chart;
mod control_plane;
mod demo;
mod differential;
mod failover;
mod faults;
mod helm;
mod monitor;
mod nodes;
mod rollout;
mod shipped;
