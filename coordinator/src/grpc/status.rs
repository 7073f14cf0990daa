//! Domain errors to `tonic::Status`: the only place where that mapping happens.

use tonic::{Code, Status};

use super::auth::AuthError;
use rota_core::slots::{self, LedgerError, StoreError};
use rota_proto::convert::Invalid;

/// A request that does not validate.
pub fn invalid_argument(err: &Invalid) -> Status {
    Status::invalid_argument(err.to_string())
}

/// An authentication failure.
pub fn unauthenticated(err: &AuthError) -> Status {
    match err {
        AuthError::Unauthenticated(_) => Status::unauthenticated(err.to_string()),
        AuthError::Unavailable(_) | AuthError::Throttled => Status::unavailable(err.to_string()),
    }
}

/// A caller that acts for a node other than its own.
pub fn permission_denied(caller: &str, node: &str) -> Status {
    Status::permission_denied(format!(
        "the caller runs on node {caller} and may only act for it, not for {node}"
    ))
}

/// The status code of a slot-layer error.
pub fn code(err: &slots::Error) -> Code {
    match err {
        slots::Error::UnknownNode(_) => Code::NotFound,
        slots::Error::Ledger(ledger) => match ledger {
            LedgerError::StaleToken { .. }
            | LedgerError::SlotHeld { .. }
            | LedgerError::ManualRequestQueued { .. }
            | LedgerError::RolloutRequestQueued { .. }
            | LedgerError::WrongState { .. }
            | LedgerError::BackingOff { .. } => Code::FailedPrecondition,
            LedgerError::TokensExhausted => Code::ResourceExhausted,
        },
        // A standby (or a leader between terms) is not failing: the agent retries and reaches
        // the leader through the Service.
        slots::Error::NotLeading | slots::Error::Store(StoreError::NotLeading) => Code::Unavailable,
        slots::Error::Store(StoreError::Conflict { .. }) => Code::Aborted,
        slots::Error::Store(StoreError::Backend(_)) => Code::Unavailable,
        slots::Error::Persist(_) => Code::Internal,
    }
}

/// A slot-layer error as a status; server-side failures are logged here. A replica that does
/// not lead refuses every agent call by design, so that refusal is logged at debug level only.
pub fn from_slots(err: &slots::Error) -> Status {
    let code = code(err);
    if matches!(err, slots::Error::NotLeading) {
        tracing::debug!(error = %err, "agent call refused: not leading");
    } else if matches!(
        code,
        Code::Internal | Code::Unavailable | Code::Aborted | Code::ResourceExhausted
    ) {
        tracing::error!(error = %err, "slot operation failed on the coordinator side");
    }
    Status::new(code, err.to_string())
}
