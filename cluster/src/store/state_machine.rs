//! The Raft state machine: the [`Registry`] plus Raft's membership, with
//! snapshots on disk.
//!
//! Applying does not write to disk: the state is rebuilt at start-up from the
//! last snapshot (`dir/snapshot`), and Raft re-applies the log entries after it.
//! The snapshot file holds bincode of `(SnapshotMeta, Vec<u8>)`, the bytes
//! being an encoded [`SnapshotImage`]; it is replaced atomically.
//!
//! # Snapshot formats
//! - format 1 (before service and component domains): bincode of a
//!   [`SnapshotImageV1`], with no header;
//! - format 2 and later: [`IMAGE_MARKER`], one byte of format, then bincode
//!   of a [`SnapshotImage`].
//!
//! A format 1 image starts with the tag of an `Option` (0 or 1), never with
//! the marker, so every snapshot ever written still decodes.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use serde::{Deserialize, Serialize};

use super::log::{create_dir, sync_dir};
use crate::command::{bincode_config, CommandResponse};
use crate::domain_table::DomainTable;
use crate::registry::{Registry, RegistryImage, RegistryImageV1, RegistryObserver};
use crate::types::{Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig};
use crate::SessionTable;

const SNAPSHOT_FILE: &str = "snapshot";
const SNAPSHOT_TMP: &str = "snapshot.tmp";

/// First byte of a snapshot image of format 2 or later.
pub const IMAGE_MARKER: u8 = 0xff;
/// The format this release writes.
pub const IMAGE_FORMAT: u8 = 2;

/// A snapshot image of format 1, which had no domains.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotImageV1 {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
    pub registry: RegistryImageV1,
}

/// The content of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotImage {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
    pub registry: RegistryImage,
}

struct Inner {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    registry: Registry,
    /// The current snapshot: its metadata and data.
    snapshot: Option<(SnapshotMeta, Vec<u8>)>,
    /// Makes snapshot ids unique within this process.
    counter: u64,
}

/// The state machine of one node. Clones share the state (the snapshot builder is one).
#[derive(Clone)]
pub struct StateMachineStore {
    dir: Arc<PathBuf>,
    inner: Arc<Mutex<Inner>>,
    /// Serialises snapshot builds and installs, so the file on disk and the
    /// one in memory are always the latest.
    snapshot_io: Arc<tokio::sync::Mutex<()>>,
}

fn invalid(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// Encodes an image in the current format.
pub fn encode_image(image: &SnapshotImage) -> io::Result<Vec<u8>> {
    let mut data = vec![IMAGE_MARKER, IMAGE_FORMAT];
    data.extend(bincode::serde::encode_to_vec(image, bincode_config()).map_err(io::Error::other)?);
    Ok(data)
}

/// Decodes an image of any format this release knows.
pub fn decode_image(data: &[u8]) -> io::Result<SnapshotImage> {
    let bad = |e: bincode::error::DecodeError| invalid(format!("bad snapshot: {e}"));
    match data {
        [IMAGE_MARKER, IMAGE_FORMAT, body @ ..] => {
            let (image, _): (SnapshotImage, usize) =
                bincode::serde::decode_from_slice(body, bincode_config()).map_err(bad)?;
            Ok(image)
        }
        [IMAGE_MARKER, format, ..] => Err(invalid(format!("snapshot format {format} is newer than this release"))),
        _ => {
            let (v1, _): (SnapshotImageV1, usize) =
                bincode::serde::decode_from_slice(data, bincode_config()).map_err(bad)?;
            Ok(SnapshotImage { last_applied: v1.last_applied, membership: v1.membership, registry: v1.registry.into() })
        }
    }
}

/// Writes `dir/snapshot` atomically: temporary file, fsync, rename, fsync of the directory.
fn persist(dir: &Path, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
    let bytes = bincode::serde::encode_to_vec((meta, data), bincode_config()).map_err(io::Error::other)?;
    let tmp = dir.join(SNAPSHOT_TMP);
    {
        let mut f = File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(SNAPSHOT_FILE))?;
    sync_dir(dir)
}

impl StateMachineStore {
    /// Opens the state machine in `dir`, restoring the last snapshot if there
    /// is one. The registry applies to `sessions`.
    pub fn open(
        dir: &Path,
        sessions: Arc<SessionTable>,
        observer: Option<Arc<dyn RegistryObserver>>,
    ) -> io::Result<StateMachineStore> {
        Self::open_with_domains(dir, sessions, Arc::new(DomainTable::new()), observer)
    }

    /// Opens the state machine as [`StateMachineStore::open`] does; the
    /// registry applies to `sessions` and `domains`.
    pub fn open_with_domains(
        dir: &Path,
        sessions: Arc<SessionTable>,
        domains: Arc<DomainTable>,
        observer: Option<Arc<dyn RegistryObserver>>,
    ) -> io::Result<StateMachineStore> {
        create_dir(dir, true)?;
        match fs::remove_file(dir.join(SNAPSHOT_TMP)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut registry = Registry::with_domains(sessions, domains);
        if let Some(observer) = observer {
            registry.set_observer(observer);
        }
        let mut inner =
            Inner { last_applied: None, membership: StoredMembership::default(), registry, snapshot: None, counter: 0 };

        match fs::read(dir.join(SNAPSHOT_FILE)) {
            Ok(bytes) => {
                // The file is replaced atomically, so it is whole or absent:
                // starting empty instead would silently lose the purged log.
                let ((meta, data), _): ((SnapshotMeta, Vec<u8>), usize) =
                    bincode::serde::decode_from_slice(&bytes, bincode_config())
                        .map_err(|e| invalid(format!("{}: bad snapshot file: {e}", dir.display())))?;
                let image = decode_image(&data)?;
                inner.registry.restore(&image.registry);
                inner.last_applied = meta.last_log_id;
                inner.membership = meta.last_membership.clone();
                tracing::info!(snapshot = %meta, "state machine restored from snapshot");
                inner.snapshot = Some((meta, data));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }

        Ok(StateMachineStore {
            dir: Arc::new(dir.to_path_buf()),
            inner: Arc::new(Mutex::new(inner)),
            snapshot_io: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Registry updates are single table operations; a panic cannot leave
        // them half-done, so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The last log id applied.
    pub fn last_applied(&self) -> Option<LogId> {
        self.lock().last_applied
    }

    /// Nodes marked down and not back up.
    pub fn down_nodes(&self) -> Vec<u64> {
        self.lock().registry.down_nodes()
    }

    /// The last membership applied.
    pub fn membership(&self) -> StoredMembership {
        self.lock().membership.clone()
    }

    /// Persists a snapshot on a blocking thread, then makes it the current one.
    async fn save_snapshot(&self, meta: SnapshotMeta, data: Vec<u8>) -> io::Result<(SnapshotMeta, Vec<u8>)> {
        let dir = self.dir.clone();
        let (meta, data) = tokio::task::spawn_blocking(move || persist(&dir, &meta, &data).map(|()| (meta, data)))
            .await
            .map_err(io::Error::other)??;
        self.lock().snapshot = Some((meta.clone(), data.clone()));
        Ok((meta, data))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let _io = self.snapshot_io.lock().await;
        let (image, id) = {
            let mut inner = self.lock();
            inner.counter += 1;
            let id = match inner.last_applied {
                Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, inner.counter),
                None => format!("0-none-{}", inner.counter),
            };
            let image = SnapshotImage {
                last_applied: inner.last_applied,
                membership: inner.membership.clone(),
                registry: inner.registry.image(),
            };
            (image, id)
        };
        let meta = SnapshotMeta {
            last_log_id: image.last_applied,
            last_membership: image.membership.clone(),
            snapshot_id: id,
        };
        let result: io::Result<(SnapshotMeta, Vec<u8>)> = async {
            let data = encode_image(&image)?;
            self.save_snapshot(meta.clone(), data).await
        }
        .await;
        let (meta, data) = result.map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        tracing::info!(snapshot = %meta, bytes = data.len(), "snapshot built");
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let inner = self.lock();
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut inner = self.lock();
        let mut responses = Vec::new();
        for entry in entries {
            inner.last_applied = Some(entry.log_id);
            let response = match &entry.payload {
                EntryPayload::Blank => CommandResponse::Done,
                EntryPayload::Normal(cmd) => inner.registry.apply(cmd),
                EntryPayload::Membership(m) => {
                    inner.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    let members: BTreeSet<u64> = m.nodes().map(|(id, _)| *id).collect();
                    inner.registry.retain_members(&members);
                    CommandResponse::Done
                }
            };
            responses.push(response);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let _io = self.snapshot_io.lock().await;
        let data = snapshot.into_inner();
        let result: io::Result<()> = async {
            let image = decode_image(&data)?;
            {
                let mut inner = self.lock();
                inner.registry.restore(&image.registry);
                inner.last_applied = meta.last_log_id;
                inner.membership = meta.last_membership.clone();
            }
            self.save_snapshot(meta.clone(), data).await?;
            Ok(())
        }
        .await;
        result.map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        tracing::info!(snapshot = %meta, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        Ok(self
            .lock()
            .snapshot
            .as_ref()
            .map(|(meta, data)| Snapshot { meta: meta.clone(), snapshot: Box::new(Cursor::new(data.clone())) }))
    }
}
