//! rota's gRPC API, package `rota.v1`, and its conversions to and from rota's domain model.

pub mod codec;
pub mod convert;

/// Generated protobuf messages and tonic services of `rota.v1`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("rota.v1");
}
