//! Who set an annotation, from the object's `metadata.managedFields`.
//!
//! Server-side field management records, per field manager, the fields it set: the entry whose
//! `fieldsV1` holds `f:metadata` → `f:annotations` → `f:<key>` owns the annotation. The manager is
//! the client's name (`kubectl-annotate`, `kubectl-edit`, `rotactl`, ...), not the user's: the
//! API keeps no user per field.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;

/// The field manager that owns the annotation `key`; with several (one per operation), the one
/// that wrote last.
pub fn annotation_manager(managed: &[ManagedFieldsEntry], key: &str) -> Option<String> {
    let field = format!("f:{key}");
    managed
        .iter()
        .enumerate()
        .filter(|(_, entry)| {
            entry.fields_v1.as_ref().is_some_and(|fields| {
                fields
                    .0
                    .get("f:metadata")
                    .and_then(|m| m.get("f:annotations"))
                    .and_then(|a| a.get(&field))
                    .is_some()
            })
        })
        .max_by_key(|(index, entry)| (entry.time.as_ref().map(|t| t.0), *index))
        .and_then(|(_, entry)| entry.manager.clone())
}
