//! openraft's `RaftStateMachine` for the state: applies run on a blocking thread, and what
//! they changed is published to readers ([`Shared`](super::Shared)) after the commit;
//! installing a snapshot replaces the state and tells watchers to re-read history.

use std::io::Cursor;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{OptionalSend, SnapshotMeta, StorageIOError};

use super::apply::{Applied, apply_batch};
use super::lease::{LeaseEffect, Lessor};
use super::snapshot::{
    SnapshotBuilder, decode_image, load_image, read_snapshot_file, write_snapshot_file,
};
use super::{RevBatch, StateMachine, io_err};
use crate::log_store::AnyErr;
use crate::types::{Entry, LogId, Member, Reply, StorageError, StoredMembership, TypeConfig};

impl StateMachine {
    fn publish(&self, published: Vec<Arc<RevBatch>>, effects: Vec<LeaseEffect>) {
        if !effects.is_empty() {
            let mut lessor = self
                .shared
                .lessor
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for e in effects {
                match e {
                    LeaseEffect::Grant(id, ttl) => lessor.grant(id, ttl),
                    LeaseEffect::Revoke(id) => lessor.revoke(id),
                }
            }
        }
        *self
            .shared
            .members
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = self.meta.members.clone();
        *self
            .shared
            .auth
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = self.ctl.auth.clone();
        *self
            .shared
            .alarms
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = self.ctl.alarms.clone();
        self.shared
            .cluster_id
            .store(self.meta.cluster_id, Ordering::Release);
        self.shared
            .revision
            .store(self.meta.revision, Ordering::Release);
        for batch in published {
            // No receivers is fine: nobody watches.
            let _ = self.shared.events.send(batch);
        }
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.meta.applied, self.meta.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Reply>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let db = self.shared.db.clone();
        let mut meta = self.meta.clone();
        let mut ctl = self.ctl.clone();
        let retention = self.retention;
        let (meta, ctl, result) = tokio::task::spawn_blocking(move || {
            let r = apply_batch(&db, &mut meta, &mut ctl, entries, retention);
            (meta, ctl, r)
        })
        .await
        .map_err(io_err)?;
        let Applied {
            replies,
            published,
            effects,
        } = result.map_err(io_err)?;
        self.meta = meta;
        self.ctl = ctl;
        self.publish(published, effects);
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            db: self.shared.db.clone(),
            path: self.snapshot_path.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let image = decode_image(&data).map_err(|e| {
            StorageError::from(StorageIOError::read_snapshot(
                Some(meta.signature()),
                &AnyErr(e),
            ))
        })?;
        let db = self.shared.db.clone();
        let sm_meta = image.meta.clone();
        self.ctl = image.ctl.clone();
        tokio::task::spawn_blocking(move || load_image(&db, &image))
            .await
            .map_err(io_err)?
            .map_err(io_err)?;
        write_snapshot_file(&self.snapshot_path, meta, &data).map_err(io_err)?;
        self.meta = sm_meta;
        {
            let mut lessor = self
                .shared
                .lessor
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *lessor = Lessor::default();
        }
        let leases = self.lease_list().map_err(io_err)?;
        let effects = leases
            .into_iter()
            .map(|(id, ttl)| LeaseEffect::Grant(id, ttl))
            .collect();
        let resync = Arc::new(RevBatch {
            revision: self.meta.revision,
            events: Vec::new(),
            resync: true,
        });
        self.publish(vec![resync], effects);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        read_snapshot_file(&self.snapshot_path)
            .map_err(|e| StorageIOError::read_snapshot(None, &AnyErr(e)).into())
    }
}
