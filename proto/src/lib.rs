//! rota's gRPC API, package `rota.v1`.

#![allow(clippy::all, missing_docs)]

/// Generated protobuf messages and tonic services of `rota.v1`.
pub mod v1 {
    tonic::include_proto!("rota.v1");
}
