//! openraft's own storage conformance suite against Rampart's log store (redb, fsync per
//! append, CRC per entry) and state machine (MVCC in redb): the rules openraft relies on
//! (purge and truncate semantics, vote and committed persistence, membership tracking,
//! snapshot build and install) checked by the library that relies on them.

use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};
use rampart_kv::log_store::LogStore;
use rampart_kv::state::StateMachine;
use rampart_kv::types::TypeConfig;

/// Each test gets fresh stores in a scratch directory, removed with the guard.
struct Stores;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Stores {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("scratch directory");
        let log = LogStore::open(&dir.path().join("raft-log.redb")).expect("open the log store");
        let (sm, _shared) = StateMachine::open(dir.path(), 0).expect("open the state machine");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite_passes() {
    Suite::test_all(Stores).expect("openraft's storage suite");
}
