//! Conformance of the sled store with openraft's storage test suite.

use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;

use super::{LogStore, StateMachineStore, Store};
use crate::typ::{StorageError, StorageIOError, TypeConfig};

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for SledBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = TempDir::new().map_err(|e| StorageIOError::write(&e))?;
        let store = Store::open(dir.path(), 1).map_err(|e| StorageIOError::write(&e))?;
        Ok((dir, store.log_store(), store.state_machine()))
    }
}

#[test]
fn openraft_storage_suite_passes_on_sled() -> Result<(), StorageError> {
    Suite::test_all(SledBuilder)
}
