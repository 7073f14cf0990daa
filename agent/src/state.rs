//! What the agent keeps on the host across its own restarts and the node's reboots: the
//! operation in progress, its fencing token, the boot id, the versions before and the phase.
//! Written atomically ([`crate::host::Host::write_file_atomic`]) after every transition.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::host::{Host, read_text_opt};
use crate::ops::OperationRecord;
use crate::{Error, Result};

/// Where the state lives on the host unless configured otherwise.
pub const DEFAULT_STATE_PATH: &str = "/var/lib/rota/agent-state.json";

/// Format version of the state file; a file of another version is not guessed at.
const FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
struct StateFile {
    format: u32,
    operation: OperationRecord,
}

/// Loads the persisted operation, `None` when there is none.
pub fn load(host: &dyn Host, path: &Path) -> Result<Option<OperationRecord>> {
    let Some(text) = read_text_opt(host, path)? else {
        return Ok(None);
    };
    let file: StateFile = serde_json::from_str(&text).map_err(|e| Error::State {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    if file.format != FORMAT {
        return Err(Error::State {
            path: path.to_path_buf(),
            detail: format!("format {} is not {FORMAT}", file.format),
        });
    }
    Ok(Some(file.operation))
}

/// Persists `record` atomically.
pub fn save(host: &dyn Host, path: &Path, record: &OperationRecord) -> Result<()> {
    let file = StateFile {
        format: FORMAT,
        operation: record.clone(),
    };
    let json = serde_json::to_vec_pretty(&file).map_err(|e| Error::State {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    host.write_file_atomic(path, &json)
}

/// Removes the persisted operation.
pub fn clear(host: &dyn Host, path: &Path) -> Result<()> {
    host.remove_file(path).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::MemoryHost;
    use rota_core::model::Operation;

    #[test]
    fn round_trip_and_corruption() {
        let host = MemoryHost::debian();
        let path = Path::new(DEFAULT_STATE_PATH);
        assert_eq!(load(&host, path).unwrap(), None);
        let record = OperationRecord::new(
            3,
            Operation::Reboot,
            "boot-1".into(),
            jiff::Timestamp::UNIX_EPOCH,
        );
        save(&host, path, &record).unwrap();
        assert_eq!(load(&host, path).unwrap(), Some(record));
        clear(&host, path).unwrap();
        assert_eq!(load(&host, path).unwrap(), None);
        host.put_file(path, "{not json");
        assert!(matches!(load(&host, path), Err(Error::State { .. })));
        host.put_file(path, r#"{"format":9,"operation":{}}"#);
        assert!(matches!(load(&host, path), Err(Error::State { .. })));
    }
}
