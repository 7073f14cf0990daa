//! Maintenance records: one durable [`MaintenanceRecord`] per maintenance (who asked, what
//! changed, every phase, the outcome), for change managers and on-call engineers.
//!
//! - [`crd`]: the custom resource;
//! - [`build`]: folding a slot's transitions into its record ([`build::apply`]), idempotently,
//!   so that a coordinator that took over continues the record;
//! - [`retention`]: which records to delete ([`retention::to_prune`]);
//! - [`report`]: the change report per pool ([`report::report`]);
//! - [`origin`]: who set the manual request's annotation, from `managedFields`.
//!
//! The coordinator writes the records (`coordinator/src/records.rs`), `rotactl history` and
//! `rotactl report` read them.

pub mod build;
pub mod crd;
pub mod origin;
pub mod report;
pub mod retention;

pub use build::{RecordContext, apply, record_name, start};
pub use crd::{
    MaintenanceRecord, MaintenanceRecordSpec, NodeVersions, PackageChange, RecordOrigin,
    RecordOutcome, RecordPhases,
};
pub use report::{PoolReport, report};
pub use retention::{Kept, Retention, to_prune};

/// Most entries a record lists (evicted pods, pending packages); counts stay exact.
pub const MAX_LISTED: usize = 200;
