//! The `MaintenancePolicy` custom resource and the pure rules derived from it.
//!
//! - [`crd`]: the resource as users write it (`kubectl get mp`), with its status.
//! - [`validate()`]: spec → [`ValidatedPolicy`] or every problem with its field path.
//! - [`window::is_open`]: maintenance windows and blackouts at an explicit instant.
//! - [`Selector`]: label selectors, for pools, blocking pods and PodDisruptionBudgets.
//!
//! Nothing here performs I/O or reads the clock.

pub mod crd;
mod selector;
mod validate;
mod version;
pub mod window;

pub use crd::{MaintenancePolicy, MaintenancePolicySpec, MaintenancePolicyStatus};
pub use selector::{Selector, SelectorProblem};
pub use validate::{
    AlertFilter, AlertSource, Backoff, Blockers, ControlPlane, DEFAULT_BACKOFF_INITIAL,
    DEFAULT_BACKOFF_MAX, DEFAULT_CONTROL_PLANE_MAX_UNAVAILABLE, DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_READY_TIMEOUT, Drain, Health, MaxUnavailable, NamespacedName, PolicyError, Reboot,
    Upgrade, ValidatedPolicy, validate,
};
pub use version::{KubeVersion, VersionError};
pub use window::{BlackoutPeriod, ClosedReason, Window, WindowState};

/// Condition types the coordinator sets in `status.conditions`.
pub mod conditions {
    /// The spec is valid (`False`: the coordinator keeps acting on the last valid spec and the
    /// message lists every problem).
    pub const VALID: &str = "Valid";
    /// A human paused the rollout (`spec.paused`).
    pub const PAUSED: &str = "Paused";
    /// The circuit breaker paused the rollout after `maxFailures` failed nodes.
    pub const CIRCUIT_OPEN: &str = "CircuitOpen";
    /// A maintenance window is open and no blackout is active.
    pub const WINDOW_OPEN: &str = "WindowOpen";
}
