//! One granted operation: the pure state machine ([`machine`]) and the executor that performs
//! its effects through the host ([`executor`]).

#[cfg(test)]
mod crash_tests;
pub mod executor;
pub mod machine;

pub use executor::{CompleteAck, Completion, Executor, ExecutorConfig, Reporter};
pub use machine::{Effect, OperationRecord, Outcome, Phase};
