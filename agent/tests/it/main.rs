//! rota-agent's integration tests, one binary: the daemon against a scripted coordinator, host
//! execution, TLS, and the real apt and dnf roots (root only). One module per concern; `common`
//! is their shared harness.

mod apt_root;
mod common;
mod daemon;
mod dnf_root;
mod host_exec;
mod policy_root;
mod tls_channel;
