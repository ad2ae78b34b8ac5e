//! The Raft log and vote on disk.
//!
//! # Files in the directory
//! - `vote`: bincode of the last saved [`Vote`], replaced atomically (`vote.tmp`,
//!   fsync, rename, fsync of the directory).
//! - `log`: an append-only sequence of records, each framed as
//!   `u32 length (LE) | u32 crc32 of the payload (LE) | payload`, the payload
//!   being bincode of a [`Record`]. Replaying the records in order rebuilds the
//!   log; a torn record at the end (a crash in the middle of a write) ends the
//!   replay and is cut off.
//!
//! # Writes
//! Every write goes through ONE writer thread, in the order the calls were
//! made, which is the order Raft requires for the log and the vote together.
//! The writer drains everything queued, writes it in one go and syncs once
//! (group commit), then reports each append as flushed. The same thread
//! rewrites the file when dead records (purged or truncated entries) make it
//! much larger than the live entries need.
//!
//! The entries are also kept in memory, so reads never touch the disk.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader, StorageIOError};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::command::bincode_config;
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

const LOG_FILE: &str = "log";
const LOG_TMP: &str = "log.tmp";
const VOTE_FILE: &str = "vote";
const VOTE_TMP: &str = "vote.tmp";

/// Bytes of a frame header: length and CRC.
const HEADER: usize = 8;
/// A longer record is taken for garbage (a torn or corrupt header).
const MAX_RECORD: u32 = 256 << 20;
/// The log file is never rewritten while smaller than this.
const COMPACT_MIN: u64 = 8 << 20;
/// Jobs that may wait for the writer before callers wait for it (back-pressure).
const QUEUE: usize = 1024;

/// One record of the `log` file, as read back.
#[derive(Debug, Deserialize)]
enum Record {
    Append(Entry),
    Truncate { since: u64 },
    Purge { upto: LogId },
    Committed(Option<LogId>),
}

/// One record of the `log` file, as written. Must stay in step with [`Record`]
/// (same variants, same order, same fields).
#[derive(Serialize)]
enum RecordRef<'a> {
    Append(&'a Entry),
    Truncate { since: u64 },
    Purge { upto: &'a LogId },
    Committed(&'a Option<LogId>),
}

/// Encodes a record with its frame header.
fn encode_frame(rec: &RecordRef<'_>) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; HEADER];
    bincode::serde::encode_into_std_write(rec, &mut buf, bincode_config()).map_err(io::Error::other)?;
    let len = u32::try_from(buf.len() - HEADER)
        .ok()
        .filter(|l| *l <= MAX_RECORD)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "log record too large"))?;
    let crc = crc32fast::hash(&buf[HEADER..]);
    buf[0..4].copy_from_slice(&len.to_le_bytes());
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok(buf)
}

/// Removes every key `<= upto`.
fn purge_map<V>(map: &mut BTreeMap<u64, V>, upto: u64) {
    match upto.checked_add(1) {
        Some(next) => *map = map.split_off(&next),
        None => map.clear(),
    }
}

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    File::open(dir)?.sync_all()
}

/// Creates `dir` if needed and, with `sync`, makes its entry durable in its parent.
pub(crate) fn create_dir(dir: &Path, sync: bool) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir)?;
    match dir.parent() {
        Some(parent) if sync => sync_dir(parent),
        _ => Ok(()),
    }
}

fn copy_err(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // Every update under the lock is a handful of map operations that cannot
    // leave the state half-done, so a poisoned lock is still usable.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// What readers see: the log as Raft last changed it (possibly ahead of the disk).
#[derive(Default)]
struct State {
    entries: BTreeMap<u64, Entry>,
    last_purged: Option<LogId>,
    committed: Option<LogId>,
    vote: Option<Vote>,
}

impl State {
    fn log_state(&self) -> LogState<TypeConfig> {
        let last = self.entries.last_key_value().map(|(_, e)| e.log_id).or(self.last_purged);
        LogState { last_purged_log_id: self.last_purged, last_log_id: last }
    }

    fn purge(&mut self, upto: LogId) {
        purge_map(&mut self.entries, upto.index);
        if self.last_purged < Some(upto) {
            self.last_purged = Some(upto);
        }
    }
}

/// Who is waiting for a job to reach the disk.
pub(crate) enum Done {
    Nobody,
    Flushed(LogFlushed<TypeConfig>),
    Ack(oneshot::Sender<io::Result<()>>),
}

impl Done {
    fn complete(self, result: io::Result<()>) {
        match self {
            Done::Nobody => {}
            Done::Flushed(cb) => cb.log_io_completed(result),
            Done::Ack(tx) => {
                // The caller may have given up waiting: nothing to tell then.
                let _ = tx.send(result);
            }
        }
    }
}

/// What a log record does to the writer's index.
enum Op {
    Append(u64),
    Truncate(u64),
    Purge(LogId),
    Committed(Option<LogId>),
}

enum Job {
    /// Records for the `log` file.
    Log { records: Vec<(Op, Vec<u8>)>, done: Done },
    /// A new `vote` file content.
    Vote { bytes: Vec<u8>, done: oneshot::Sender<io::Result<()>> },
}

/// The log storage of one node. Clones share it (the node keeps one for status
/// reports); only Raft writes through it.
#[derive(Clone)]
pub struct LogStore {
    state: Arc<Mutex<State>>,
    writer: Arc<WriterHandle>,
}

/// The way to the writer thread. When the last [`LogStore`] clone drops it,
/// the queue closes and the writer exits after writing what is queued.
struct WriterHandle {
    /// `None` only while dropping.
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    syncs: Arc<AtomicU64>,
}

impl Drop for WriterHandle {
    fn drop(&mut self) {
        // Waiting for the writer means a store reopened on the same directory
        // never races an old writer.
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("raft log writer panicked");
            }
        }
    }
}

/// Reads the log of a [`LogStore`]: a cheap clone for replication tasks.
#[derive(Clone)]
pub struct LogReader {
    state: Arc<Mutex<State>>,
}

impl LogStore {
    /// Opens (or creates) the log in `dir`. With `sync`, appends, truncations,
    /// purges and votes are on disk (`fsync`) before they are reported done.
    pub fn open(dir: &Path, sync: bool) -> io::Result<LogStore> {
        Self::open_with(dir, sync, COMPACT_MIN)
    }

    pub(crate) fn open_with(dir: &Path, sync: bool, compact_min: u64) -> io::Result<LogStore> {
        create_dir(dir, sync)?;
        for tmp in [LOG_TMP, VOTE_TMP] {
            match fs::remove_file(dir.join(tmp)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }

        let vote = match fs::read(dir.join(VOTE_FILE)) {
            Ok(bytes) => {
                let (vote, _): (Vote, usize) = bincode::serde::decode_from_slice(&bytes, bincode_config())
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad vote file: {e}")))?;
                Some(vote)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };

        let path = dir.join(LOG_FILE);
        let created = !path.exists();
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
        if created && sync {
            // Synced appends are worth nothing if the file itself can vanish.
            sync_dir(dir)?;
        }
        let replayed = replay(&mut file, &path, sync)?;
        let live_bytes = replayed.index.values().map(|(_, len)| u64::from(*len)).sum();
        tracing::debug!(
            path = %path.display(),
            entries = replayed.state.entries.len(),
            bytes = replayed.len,
            "raft log opened"
        );

        let (last_purged, committed) = (replayed.state.last_purged, replayed.state.committed);
        let state = Arc::new(Mutex::new(State { vote, ..replayed.state }));
        let syncs = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            dir: dir.to_path_buf(),
            path,
            file,
            len: replayed.len,
            index: replayed.index,
            live_bytes,
            last_purged,
            committed,
            sync,
            compact_min,
            broken: None,
            syncs: syncs.clone(),
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let handle = std::thread::Builder::new().name("raft-log-writer".into()).spawn(move || writer.run(rx))?;
        Ok(LogStore { state, writer: Arc::new(WriterHandle { tx: Some(tx), thread: Some(handle), syncs }) })
    }

    /// How many times the writer synced the log file to disk so far.
    pub fn syncs(&self) -> u64 {
        self.writer.syncs.load(Ordering::Relaxed)
    }

    /// The last committed log id Raft saved.
    pub fn committed(&self) -> Option<LogId> {
        lock(&self.state).committed
    }

    /// The id of the last entry, or of the last purged one when the log is empty.
    pub fn last_log_id(&self) -> Option<LogId> {
        lock(&self.state).log_state().last_log_id
    }

    async fn send(&self, job: Job) -> io::Result<()> {
        let tx = self.writer.tx.as_ref().ok_or_else(|| io::Error::other("raft log writer stopped"))?;
        tx.send(job).await.map_err(|_| io::Error::other("raft log writer stopped"))
    }

    /// Sends records and waits until the writer has them on disk.
    async fn write_and_wait(&self, records: Vec<(Op, Vec<u8>)>) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.send(Job::Log { records, done: Done::Ack(tx) }).await?;
        rx.await.map_err(|_| io::Error::other("raft log writer stopped"))?
    }

    /// Appends in memory and queues the records; `done` learns when they are on disk.
    pub(crate) async fn append_with<I>(&mut self, entries: I, done: Done) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry>,
    {
        let mut records = Vec::new();
        {
            let mut state = lock(&self.state);
            for entry in entries {
                let frame = encode_frame(&RecordRef::Append(&entry))?;
                records.push((Op::Append(entry.log_id.index), frame));
                state.entries.insert(entry.log_id.index, entry);
            }
        }
        self.send(Job::Log { records, done }).await
    }
}

fn read_range<RB: RangeBounds<u64>>(state: &Mutex<State>, range: RB) -> Vec<Entry> {
    lock(state).entries.range(range).map(|(_, e)| e.clone()).collect()
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        Ok(read_range(&self.state, range))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        Ok(read_range(&self.state, range))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        Ok(lock(&self.state).log_state())
    }

    async fn get_log_reader(&mut self) -> LogReader {
        LogReader { state: self.state.clone() }
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let result: io::Result<()> = async {
            let bytes = bincode::serde::encode_to_vec(vote, bincode_config()).map_err(io::Error::other)?;
            let (tx, rx) = oneshot::channel();
            self.send(Job::Vote { bytes, done: tx }).await?;
            rx.await.map_err(|_| io::Error::other("raft log writer stopped"))?
        }
        .await;
        result.map_err(|e| StorageIOError::write_vote(&e))?;
        lock(&self.state).vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(lock(&self.state).vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Written in order with the log but not waited for: a committed id
        // lost in a crash only means fewer entries are re-applied at start-up.
        let frame = encode_frame(&RecordRef::Committed(&committed)).map_err(|e| StorageIOError::write(&e))?;
        lock(&self.state).committed = committed;
        self.send(Job::Log { records: vec![(Op::Committed(committed), frame)], done: Done::Nobody })
            .await
            .map_err(|e| StorageIOError::write(&e))?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(lock(&self.state).committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.append_with(entries, Done::Flushed(callback)).await.map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let result: io::Result<()> = async {
            let frame = encode_frame(&RecordRef::Truncate { since: log_id.index })?;
            drop(lock(&self.state).entries.split_off(&log_id.index));
            self.write_and_wait(vec![(Op::Truncate(log_id.index), frame)]).await
        }
        .await;
        result.map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let result: io::Result<()> = async {
            let frame = encode_frame(&RecordRef::Purge { upto: &log_id })?;
            lock(&self.state).purge(log_id);
            self.write_and_wait(vec![(Op::Purge(log_id), frame)]).await
        }
        .await;
        result.map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }
}

/// The log file as replay found it.
struct Replayed {
    state: State,
    /// Index → (offset, frame length) of every live `Append` record.
    index: BTreeMap<u64, (u64, u32)>,
    /// Length of the valid prefix (the file is cut to it).
    len: u64,
}

/// Reads every record of `file`, cutting off a torn or corrupt tail.
fn replay(file: &mut File, path: &Path, sync: bool) -> io::Result<Replayed> {
    let file_len = file.metadata()?.len();
    let mut state = State::default();
    let mut index = BTreeMap::new();
    let mut pos = 0u64;
    let mut reader = BufReader::with_capacity(1 << 16, &mut *file);
    let mut payload = Vec::new();

    // Why the replay stopped before the end of the file, and whether that is a
    // torn tail (expected after a crash) or damage in the middle.
    let mut stop: Option<(&'static str, bool)> = None;
    while pos < file_len {
        let remaining = file_len - pos;
        if remaining < HEADER as u64 {
            stop = Some(("short record header", true));
            break;
        }
        let mut header = [0u8; HEADER];
        reader.read_exact(&mut header)?;
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let frame_end = pos + HEADER as u64 + u64::from(len);
        if len == 0 {
            // A zero-filled tail is what some file systems leave after a crash.
            let mut rest = Vec::new();
            reader.read_to_end(&mut rest)?;
            let zeros = header.iter().chain(rest.iter()).all(|b| *b == 0);
            stop = Some(("empty record", zeros));
            break;
        }
        if frame_end > file_len {
            stop = Some(("short record", true));
            break;
        }
        if len > MAX_RECORD {
            stop = Some(("bad record length", frame_end == file_len));
            break;
        }
        payload.resize(len as usize, 0);
        reader.read_exact(&mut payload)?;
        if crc32fast::hash(&payload) != crc {
            stop = Some(("bad record checksum", frame_end == file_len));
            break;
        }
        let (record, _): (Record, usize) =
            bincode::serde::decode_from_slice(&payload, bincode_config()).map_err(|e| {
                // The checksum holds, so this is no torn write: refuse to start
                // rather than drop entries that may be committed.
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: undecodable record at offset {pos}: {e}", path.display()),
                )
            })?;
        match record {
            Record::Append(entry) => {
                let i = entry.log_id.index;
                index.insert(i, (pos, HEADER as u32 + len));
                state.entries.insert(i, entry);
            }
            Record::Truncate { since } => {
                drop(index.split_off(&since));
                drop(state.entries.split_off(&since));
            }
            Record::Purge { upto } => {
                purge_map(&mut index, upto.index);
                state.purge(upto);
            }
            Record::Committed(c) => state.committed = c,
        }
        pos = frame_end;
    }
    drop(reader);

    if let Some((what, at_end)) = stop {
        if at_end {
            tracing::warn!(
                path = %path.display(),
                offset = pos,
                dropped_bytes = file_len - pos,
                "raft log: {what} at the end (torn write), cutting it off"
            );
        } else {
            tracing::error!(
                path = %path.display(),
                offset = pos,
                dropped_bytes = file_len - pos,
                "raft log: {what} followed by more data (corruption), cutting the log there"
            );
        }
        file.set_len(pos)?;
        if sync {
            file.sync_all()?;
        }
    }
    Ok(Replayed { state, index, len: pos })
}

/// The thread that owns the `log` and `vote` files.
struct Writer {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    /// Bytes of valid records in the file: the next write goes there.
    len: u64,
    /// Index → (offset, frame length) of every live `Append` record.
    index: BTreeMap<u64, (u64, u32)>,
    live_bytes: u64,
    last_purged: Option<LogId>,
    committed: Option<LogId>,
    sync: bool,
    compact_min: u64,
    /// Set after a failed write: the file's state is unknown, nothing more is written.
    broken: Option<String>,
    syncs: Arc<AtomicU64>,
}

/// At most this many jobs are written with one sync.
const MAX_BATCH: usize = 4096;

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        while let Some(first) = rx.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            self.process(batch);
            self.maybe_compact();
        }
        tracing::debug!("raft log writer stopped");
    }

    fn process(&mut self, batch: Vec<Job>) {
        let mut buf = Vec::new();
        let mut waiting = Vec::new();
        for job in batch {
            match job {
                Job::Log { records, done } => {
                    for (op, frame) in records {
                        let offset = self.len + buf.len() as u64;
                        self.index_op(op, offset, frame.len());
                        buf.extend_from_slice(&frame);
                    }
                    waiting.push(done);
                }
                Job::Vote { bytes, done } => {
                    // The vote must not reach the disk before earlier log writes.
                    let result = self.flush(&mut buf, &mut waiting).and_then(|()| self.write_vote(&bytes));
                    let _ = done.send(result);
                }
            }
        }
        // Errors were reported to everyone waiting.
        let _ = self.flush(&mut buf, &mut waiting);
    }

    fn index_op(&mut self, op: Op, offset: u64, frame_len: usize) {
        match op {
            Op::Append(i) => {
                let len = u32::try_from(frame_len).unwrap_or(u32::MAX);
                if let Some((_, old)) = self.index.insert(i, (offset, len)) {
                    self.live_bytes = self.live_bytes.saturating_sub(u64::from(old));
                }
                self.live_bytes += u64::from(len);
            }
            Op::Truncate(since) => {
                let gone = self.index.split_off(&since);
                self.live_bytes = self.live_bytes.saturating_sub(gone.values().map(|(_, l)| u64::from(*l)).sum());
            }
            Op::Purge(upto) => {
                let keep = match upto.index.checked_add(1) {
                    Some(next) => self.index.split_off(&next),
                    None => BTreeMap::new(),
                };
                let gone = std::mem::replace(&mut self.index, keep);
                self.live_bytes = self.live_bytes.saturating_sub(gone.values().map(|(_, l)| u64::from(*l)).sum());
                if self.last_purged < Some(upto) {
                    self.last_purged = Some(upto);
                }
            }
            Op::Committed(c) => self.committed = c,
        }
    }

    /// Writes `buf`, syncs once if someone waits, and tells everyone waiting.
    fn flush(&mut self, buf: &mut Vec<u8>, waiting: &mut Vec<Done>) -> io::Result<()> {
        let must_sync = self.sync && waiting.iter().any(|d| !matches!(d, Done::Nobody));
        let result = if buf.is_empty() && waiting.is_empty() { Ok(()) } else { self.write_log(buf, must_sync) };
        buf.clear();
        for done in waiting.drain(..) {
            done.complete(result.as_ref().map(|_| ()).map_err(copy_err));
        }
        result
    }

    fn write_log(&mut self, buf: &[u8], sync: bool) -> io::Result<()> {
        if let Some(why) = &self.broken {
            return Err(io::Error::other(format!("raft log unusable after an earlier error: {why}")));
        }
        let result = (|| -> io::Result<()> {
            if !buf.is_empty() {
                self.file.seek(SeekFrom::Start(self.len))?;
                self.file.write_all(buf)?;
            }
            if sync {
                self.file.sync_data()?;
                self.syncs.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })();
        match &result {
            Ok(()) => self.len += buf.len() as u64,
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "raft log write failed");
                self.broken = Some(e.to_string());
            }
        }
        result
    }

    fn write_vote(&self, bytes: &[u8]) -> io::Result<()> {
        let tmp = self.dir.join(VOTE_TMP);
        {
            let mut f = File::create(&tmp)?;
            f.write_all(bytes)?;
            if self.sync {
                f.sync_all()?;
            }
        }
        fs::rename(&tmp, self.dir.join(VOTE_FILE))?;
        if self.sync {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    fn maybe_compact(&mut self) {
        if self.broken.is_some() || self.len <= self.compact_min.max(self.live_bytes.saturating_mul(4)) {
            return;
        }
        let before = self.len;
        match self.compact() {
            Ok(()) => tracing::info!(before, after = self.len, "raft log compacted"),
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "raft log compaction failed");
                let _ = fs::remove_file(self.dir.join(LOG_TMP));
            }
        }
    }

    /// Rewrites the file with only the live records: a `Purge` record for
    /// `last_purged`, the committed id, then the live entries in index order.
    fn compact(&mut self) -> io::Result<()> {
        let tmp_path = self.dir.join(LOG_TMP);
        let mut out = BufWriter::with_capacity(1 << 16, File::create(&tmp_path)?);
        let mut pos = 0u64;
        if let Some(upto) = &self.last_purged {
            let frame = encode_frame(&RecordRef::Purge { upto })?;
            out.write_all(&frame)?;
            pos += frame.len() as u64;
        }
        if self.committed.is_some() {
            let frame = encode_frame(&RecordRef::Committed(&self.committed))?;
            out.write_all(&frame)?;
            pos += frame.len() as u64;
        }
        let mut new_index = BTreeMap::new();
        let mut frame = Vec::new();
        for (i, (offset, len)) in &self.index {
            frame.resize(*len as usize, 0);
            self.file.seek(SeekFrom::Start(*offset))?;
            self.file.read_exact(&mut frame)?;
            out.write_all(&frame)?;
            new_index.insert(*i, (pos, *len));
            pos += u64::from(*len);
        }
        let tmp = out.into_inner().map_err(|e| e.into_error())?;
        // Always synced, even without `sync`: a rename of an unwritten file
        // would lose the whole log, not just its last records.
        tmp.sync_all()?;
        drop(tmp);
        fs::rename(&tmp_path, &self.path)?;

        // From here on the old file is gone: failing to take up the new one
        // leaves the writer unusable.
        let reopened = sync_dir(&self.dir).and_then(|()| OpenOptions::new().read(true).write(true).open(&self.path));
        match reopened {
            Ok(file) => {
                self.file = file;
                self.len = pos;
                self.index = new_index;
                Ok(())
            }
            Err(e) => {
                self.broken = Some(format!("reopening after compaction: {e}"));
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log written today must replay in every later release.
    #[test]
    fn golden_frames() {
        let frame = encode_frame(&RecordRef::Truncate { since: 5 }).unwrap();
        let crc = crc32fast::hash(&[1, 5]).to_le_bytes();
        assert_eq!(frame, [2, 0, 0, 0, crc[0], crc[1], crc[2], crc[3], 1, 5]);

        let upto = openraft::testing::log_id(3, 2, 7);
        let frame = encode_frame(&RecordRef::Purge { upto: &upto }).unwrap();
        assert_eq!(&frame[HEADER..], [2, 3, 2, 7]);
        let frame = encode_frame(&RecordRef::Committed(&Some(upto))).unwrap();
        assert_eq!(&frame[HEADER..], [3, 1, 3, 2, 7]);

        let entry = Entry { log_id: upto, payload: openraft::EntryPayload::Blank };
        let frame = encode_frame(&RecordRef::Append(&entry)).unwrap();
        assert_eq!(&frame[HEADER..], [0, 3, 2, 7, 0]);
        let (back, _): (Record, usize) = bincode::serde::decode_from_slice(&frame[HEADER..], bincode_config()).unwrap();
        assert!(matches!(back, Record::Append(e) if e.log_id == upto));
    }
}
