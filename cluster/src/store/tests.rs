use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{EntryPayload, Membership, RaftLogReader, RaftSnapshotBuilder, StorageIOError};
use tempfile::TempDir;
use tokio::sync::oneshot;

use super::log::Done;
use super::*;
use crate::command::{Command, CommandResponse, CommandV1, SessionRecord};
use crate::types::{Entry, LogId, MemberNode, StorageError, StoredMembership, TypeConfig, Vote};
use crate::SessionTable;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = TempDir::new().map_err(|e| StorageIOError::write(&e))?;
        let raft = dir.path().join("raft");
        let log = LogStore::open(&raft, true).map_err(|e| StorageIOError::write_logs(&e))?;
        let sm = StateMachineStore::open(&raft, Arc::new(SessionTable::new()), None)
            .map_err(|e| StorageIOError::read_state_machine(&e))?;
        Ok((dir, log, sm))
    }
}

/// openraft's own conformance suite. It runs every case in a fresh tokio
/// runtime of its own, so this is a plain test, not a `#[tokio::test]`.
#[test]
fn openraft_suite() {
    Suite::test_all(Builder).unwrap();
}

fn log_id(term: u64, index: u64) -> LogId {
    openraft::testing::log_id(term, 1, index)
}

fn blank(term: u64, index: u64) -> Entry {
    Entry { log_id: log_id(term, index), payload: EntryPayload::Blank }
}

fn normal(term: u64, index: u64, cmd: Command) -> Entry {
    Entry { log_id: log_id(term, index), payload: EntryPayload::Normal(cmd) }
}

fn membership(term: u64, index: u64, ids: &[u64]) -> Entry {
    let voters: BTreeSet<u64> = ids.iter().copied().collect();
    let nodes: BTreeMap<u64, MemberNode> =
        ids.iter().map(|id| (*id, MemberNode { addr: format!("10.0.0.{id}:7000") })).collect();
    Entry { log_id: log_id(term, index), payload: EntryPayload::Membership(Membership::new(vec![voters], nodes)) }
}

fn rec(jid: &str, node: u64, sid: u64) -> SessionRecord {
    SessionRecord { jid: jid.into(), node, sid, priority: None, prio_seq: 0, created_micros: 1000 + sid as i64 }
}

fn open_session(term: u64, index: u64, jid: &str, node: u64, sid: u64) -> Entry {
    normal(term, index, CommandV1::OpenSession(rec(jid, node, sid)).into())
}

async fn all_entries(log: &mut LogStore) -> Vec<Entry> {
    log.try_get_log_entries(..).await.unwrap()
}

fn ids(entries: &[Entry]) -> Vec<LogId> {
    entries.iter().map(|e| e.log_id).collect()
}

fn log_len(dir: &Path) -> u64 {
    std::fs::metadata(dir.join("log")).unwrap().len()
}

fn append_bytes(dir: &Path, bytes: &[u8]) {
    let mut f = OpenOptions::new().append(true).open(dir.join("log")).unwrap();
    f.write_all(bytes).unwrap();
}

#[tokio::test]
async fn restart_keeps_entries_vote_purge_and_committed() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path();
    let vote = Vote::new_committed(3, 2);
    let written = {
        let mut log = LogStore::open(dir, true).unwrap();
        log.blocking_append([blank(1, 1), membership(1, 2, &[1, 2, 3])]).await.unwrap();
        log.blocking_append((3..=10).map(|i| open_session(2, i, &format!("u{i}@x/r"), 1, i))).await.unwrap();
        log.save_vote(&vote).await.unwrap();
        log.purge(log_id(1, 2)).await.unwrap();
        log.truncate(log_id(2, 9)).await.unwrap();
        log.blocking_append([blank(3, 9)]).await.unwrap();
        log.save_committed(Some(log_id(2, 6))).await.unwrap();
        all_entries(&mut log).await
    };
    assert_eq!(ids(&written), [(2, 3), (2, 4), (2, 5), (2, 6), (2, 7), (2, 8), (3, 9)].map(|(t, i)| log_id(t, i)));

    let mut log = LogStore::open(dir, true).unwrap();
    let back = all_entries(&mut log).await;
    assert_eq!(ids(&back), ids(&written));
    assert_eq!(back[1].payload, written[1].payload);
    assert_eq!(log.read_vote().await.unwrap(), Some(vote));
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(2, 6)));
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 2)));
    assert_eq!(state.last_log_id, Some(log_id(3, 9)));

    // The reader sees what the store appends.
    let mut reader = log.get_log_reader().await;
    log.blocking_append([blank(3, 10)]).await.unwrap();
    assert_eq!(ids(&reader.try_get_log_entries(9..).await.unwrap()), [log_id(3, 9), log_id(3, 10)]);
}

#[tokio::test]
async fn empty_dir_opens_empty() {
    let tmp = TempDir::new().unwrap();
    let mut log = LogStore::open(&tmp.path().join("a/b"), false).unwrap();
    assert!(all_entries(&mut log).await.is_empty());
    assert_eq!(log.read_vote().await.unwrap(), None);
    let state = log.get_log_state().await.unwrap();
    assert_eq!((state.last_purged_log_id, state.last_log_id), (None, None));
}

/// A record whose frame header promises more bytes than the file holds.
fn partial_record() -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&40u32.to_le_bytes());
    v.extend_from_slice(&0xdead_beefu32.to_le_bytes());
    v.extend_from_slice(&[1, 2, 3, 4, 5]);
    v
}

#[tokio::test]
async fn torn_tail_is_cut_and_the_log_goes_on() {
    let tails: [(&str, Vec<u8>); 4] = [
        ("garbage", b"garbage bytes after a crash".to_vec()),
        ("partial record", partial_record()),
        ("short header", vec![7, 0, 0]),
        ("zero-filled tail", vec![0; 4096]),
    ];
    for (what, tail) in tails {
        let tmp = TempDir::new().unwrap();
        let dir = tmp.path();
        {
            let mut log = LogStore::open(dir, true).unwrap();
            log.blocking_append([blank(1, 1), blank(1, 2), open_session(1, 3, "a@x/r", 1, 1)]).await.unwrap();
        }
        let good_len = log_len(dir);
        append_bytes(dir, &tail);

        {
            let mut log = LogStore::open(dir, true).unwrap();
            assert_eq!(log_len(dir), good_len, "{what}: the tail is cut off");
            assert_eq!(ids(&all_entries(&mut log).await), [log_id(1, 1), log_id(1, 2), log_id(1, 3)], "{what}");
            log.blocking_append([blank(2, 4)]).await.unwrap();
        }
        let mut log = LogStore::open(dir, true).unwrap();
        let back = all_entries(&mut log).await;
        assert_eq!(ids(&back), [log_id(1, 1), log_id(1, 2), log_id(1, 3), log_id(2, 4)], "{what}");
        assert!(matches!(back[2].payload, EntryPayload::Normal(_)), "{what}");
    }
}

#[tokio::test]
async fn corrupt_record_in_the_middle_cuts_the_log_there() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path();
    {
        let mut log = LogStore::open(dir, false).unwrap();
        log.blocking_append([blank(1, 1)]).await.unwrap();
    }
    let first_len = log_len(dir);
    {
        let mut log = LogStore::open(dir, false).unwrap();
        log.blocking_append([blank(1, 2), blank(1, 3)]).await.unwrap();
    }
    // Flip the last byte of the second record's payload.
    let mut bytes = std::fs::read(dir.join("log")).unwrap();
    let second_len = u32::from_le_bytes(bytes[first_len as usize..first_len as usize + 4].try_into().unwrap());
    let at = first_len as usize + 8 + second_len as usize - 1;
    bytes[at] ^= 0xff;
    std::fs::write(dir.join("log"), &bytes).unwrap();

    let mut log = LogStore::open(dir, false).unwrap();
    assert_eq!(ids(&all_entries(&mut log).await), [log_id(1, 1)]);
    assert_eq!(log_len(dir), first_len);
}

#[tokio::test]
async fn undecodable_record_with_a_good_checksum_refuses_to_open() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path();
    {
        let mut log = LogStore::open(dir, false).unwrap();
        log.blocking_append([blank(1, 1)]).await.unwrap();
    }
    let payload = [99u8, 1, 2];
    let mut frame = Vec::new();
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    frame.extend_from_slice(&payload);
    append_bytes(dir, &frame);
    let err = LogStore::open(dir, false).err().unwrap();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
}

/// Many appends queued without waiting all complete, with fewer syncs than appends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_completes_every_append() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path();
    let n = 500u64;
    let mut log = LogStore::open(dir, true).unwrap();
    let mut waits = Vec::new();
    for i in 1..=n {
        let (tx, rx) = oneshot::channel();
        log.append_with([open_session(1, i, &format!("u{i}@x/r"), 1, i)], Done::Ack(tx)).await.unwrap();
        waits.push(rx);
    }
    // Readable at once, before they are on disk.
    assert_eq!(all_entries(&mut log).await.len() as u64, n);
    for rx in waits {
        rx.await.unwrap().unwrap();
    }
    let syncs = log.syncs();
    assert!(syncs >= 1 && syncs < n / 2, "{syncs} syncs for {n} appends");
    drop(log);
    let mut log = LogStore::open(dir, true).unwrap();
    assert_eq!(all_entries(&mut log).await.len() as u64, n);
}

#[tokio::test]
async fn compaction_drops_dead_records_and_keeps_the_log() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path();
    let mut log = LogStore::open_with(dir, false, 4096).unwrap();
    log.blocking_append((1..=300).map(|i| open_session(1, i, &format!("user{i}@example.org/r"), 1, i))).await.unwrap();
    let full = log_len(dir);
    assert!(full > 4096 * 2);
    log.save_committed(Some(log_id(1, 295))).await.unwrap();
    log.purge(log_id(1, 290)).await.unwrap();
    // Any later job waits for the compaction that followed the purge.
    log.save_vote(&Vote::new(1, 1)).await.unwrap();
    let compacted = log_len(dir);
    assert!(compacted < full / 10, "{compacted} bytes after compaction, {full} before");

    // The writer's offsets point into the new file: compacting again copies the right records.
    log.blocking_append((301..=400).map(|i| open_session(1, i, &format!("user{i}@example.org/r"), 1, i)))
        .await
        .unwrap();
    log.purge(log_id(1, 395)).await.unwrap();
    log.truncate(log_id(1, 399)).await.unwrap();
    log.save_vote(&Vote::new(1, 1)).await.unwrap();
    drop(log);

    let mut log = LogStore::open_with(dir, false, 4096).unwrap();
    let back = all_entries(&mut log).await;
    assert_eq!(ids(&back), (396..=398).map(|i| log_id(1, i)).collect::<Vec<_>>());
    let EntryPayload::Normal(Command::V1(CommandV1::OpenSession(r))) = &back[0].payload else {
        panic!("unexpected payload {:?}", back[0].payload);
    };
    assert_eq!(r.jid, "user396@example.org/r");
    assert_eq!(log.get_log_state().await.unwrap().last_purged_log_id, Some(log_id(1, 395)));
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 295)));
    assert!(!dir.join("log.tmp").exists());
}

#[tokio::test]
async fn snapshot_survives_a_restart() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path();
    let mut sm = StateMachineStore::open(dir, Arc::new(SessionTable::new()), None).unwrap();
    assert!(sm.get_current_snapshot().await.unwrap().is_none());
    let replies = sm
        .apply([
            membership(1, 1, &[1, 2]),
            open_session(1, 2, "a@x/r", 1, 10),
            open_session(1, 3, "b@x/r", 2, 20),
            open_session(1, 4, "c@x/r", 3, 30),
            normal(1, 5, CommandV1::NodeDown { node: 2 }.into()),
            blank(2, 6),
        ])
        .await
        .unwrap();
    assert_eq!(replies.len(), 6);
    assert_eq!(replies[0], CommandResponse::Done);
    assert_eq!(replies[1], CommandResponse::Opened { accepted: true, loser: None });
    assert_eq!(sm.down_nodes(), [2]);
    let built = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    assert_eq!(built.meta.last_log_id, Some(log_id(2, 6)));
    assert!(built.meta.snapshot_id.starts_with("2-6-"), "{}", built.meta.snapshot_id);
    // Applied after the snapshot: gone after a restart, until Raft re-applies it.
    sm.apply([open_session(2, 7, "d@x/r", 1, 40)]).await.unwrap();
    drop(sm);

    let sessions = Arc::new(SessionTable::new());
    let mut sm = StateMachineStore::open(dir, sessions.clone(), None).unwrap();
    // Node 2 is down (its session left), node 3 serves sessions though not a member (no
    // membership change since it opened).
    assert_eq!(sessions.len(), 2);
    let a = sessions.get(&meerkat_xmpp::jid::parse_full("a@x/r").unwrap()).unwrap();
    assert_eq!((a.node.0, a.sid.0), (1, 10));
    assert_eq!(sm.last_applied(), Some(log_id(2, 6)));
    assert_eq!(sm.down_nodes(), [2]);
    let mem = sm.membership();
    assert_eq!(mem.log_id(), &Some(log_id(1, 1)));
    assert_eq!(mem.nodes().map(|(id, _)| *id).collect::<Vec<_>>(), [1, 2]);
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(2, 6)));
    let current = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, built.meta);
}

#[tokio::test]
async fn installed_snapshot_replaces_the_state_and_survives_a_restart() {
    let leader_dir = TempDir::new().unwrap();
    let follower_dir = TempDir::new().unwrap();
    let mut leader = StateMachineStore::open(leader_dir.path(), Arc::new(SessionTable::new()), None).unwrap();
    leader.apply([membership(1, 1, &[1, 2]), open_session(1, 2, "a@x/r", 2, 5)]).await.unwrap();
    let snap = leader.get_snapshot_builder().await.build_snapshot().await.unwrap();

    let sessions = Arc::new(SessionTable::new());
    let mut follower = StateMachineStore::open(follower_dir.path(), sessions.clone(), None).unwrap();
    follower.apply([open_session(1, 1, "old@x/r", 1, 1)]).await.unwrap();
    follower.install_snapshot(&snap.meta, snap.snapshot).await.unwrap();
    assert_eq!(sessions.len(), 1);
    assert_eq!(follower.last_applied(), Some(log_id(1, 2)));
    drop(follower);

    let sessions = Arc::new(SessionTable::new());
    let follower = StateMachineStore::open(follower_dir.path(), sessions.clone(), None).unwrap();
    assert_eq!(sessions.len(), 1);
    assert_eq!(follower.last_applied(), Some(log_id(1, 2)));
    assert_eq!(follower.membership(), leader.membership());
}

#[tokio::test]
async fn membership_change_drops_sessions_of_removed_nodes() {
    let tmp = TempDir::new().unwrap();
    let sessions = Arc::new(SessionTable::new());
    let mut sm = StateMachineStore::open(tmp.path(), sessions.clone(), None).unwrap();
    sm.apply([
        membership(1, 1, &[1, 2, 3]),
        open_session(1, 2, "a@x/r", 1, 1),
        open_session(1, 3, "b@x/r", 3, 2),
        membership(1, 4, &[1, 2]),
    ])
    .await
    .unwrap();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sm.membership(), {
        let Entry { log_id, payload: EntryPayload::Membership(m) } = membership(1, 4, &[1, 2]) else { unreachable!() };
        StoredMembership::new(Some(log_id), m)
    });
}

#[test]
fn bad_snapshot_file_refuses_to_open() {
    let tmp = TempDir::new().unwrap();
    std::fs::write(tmp.path().join("snapshot"), b"not a snapshot").unwrap();
    let err = StateMachineStore::open(tmp.path(), Arc::new(SessionTable::new()), None).err().unwrap();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
}

fn register_domain(term: u64, index: u64, domain: &str, node: u64) -> Entry {
    let rec = crate::domain_table::DomainRecord {
        domain: domain.into(),
        node,
        kind: crate::domain_table::DomainKind::Component,
        id: 1,
    };
    normal(term, index, crate::command::CommandV2::RegisterDomain(rec).into())
}

#[tokio::test]
async fn domains_survive_a_snapshot_and_a_restart() {
    let tmp = TempDir::new().unwrap();
    let domains = Arc::new(crate::domain_table::DomainTable::new());
    let mut sm =
        StateMachineStore::open_with_domains(tmp.path(), Arc::new(SessionTable::new()), domains.clone(), None).unwrap();
    let replies = sm
        .apply([membership(1, 1, &[1, 2]), register_domain(1, 2, "irc.x", 2), register_domain(1, 3, "irc.x", 1)])
        .await
        .unwrap();
    assert_eq!(replies[1], CommandResponse::DomainRegistered);
    assert!(matches!(&replies[2], CommandResponse::DomainTaken { holder } if holder.node == 2));
    let built = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let data = built.snapshot.into_inner();
    assert_eq!(&data[..2], [state_machine::IMAGE_MARKER, state_machine::IMAGE_FORMAT]);
    assert_eq!(state_machine::decode_image(&data).unwrap().registry.domains, domains.export());
    drop(sm);

    let restored = Arc::new(crate::domain_table::DomainTable::new());
    let _sm = StateMachineStore::open_with_domains(tmp.path(), Arc::new(SessionTable::new()), restored.clone(), None)
        .unwrap();
    assert_eq!(restored.export(), domains.export());
    assert_eq!(restored.get("irc.x").map(|r| r.node), Some(2));

    // A membership without node 2 takes its domains away.
    let mut sm = _sm;
    sm.apply([membership(2, 4, &[1])]).await.unwrap();
    assert!(restored.is_empty());
}

/// A snapshot written before domains existed (format 1, no header) still
/// opens, as a file on disk and as a snapshot installed from the leader.
#[tokio::test]
async fn a_format_1_snapshot_still_decodes() {
    let members = membership(1, 1, &[1, 2]);
    let EntryPayload::Membership(m) = members.payload else { unreachable!() };
    let old = SnapshotImageV1 {
        last_applied: Some(log_id(1, 3)),
        membership: StoredMembership::new(Some(log_id(1, 1)), m),
        registry: crate::registry::RegistryImageV1 { sessions: vec![rec("a@x/r", 2, 5)], down: vec![3] },
    };
    let data = bincode::serde::encode_to_vec(&old, crate::command::bincode_config()).unwrap();
    // The bytes of format 1 as the release before domains wrote them: no marker.
    assert_eq!(data[0], 1, "Some(last_applied)");

    let image = state_machine::decode_image(&data).unwrap();
    assert_eq!(image.last_applied, old.last_applied);
    assert_eq!(image.registry.sessions, old.registry.sessions);
    assert_eq!(image.registry.down, vec![3]);
    assert!(image.registry.domains.is_empty());

    let meta = crate::types::SnapshotMeta {
        last_log_id: old.last_applied,
        last_membership: old.membership.clone(),
        snapshot_id: "1-3-1".into(),
    };
    let tmp = TempDir::new().unwrap();
    let file = bincode::serde::encode_to_vec((&meta, &data), crate::command::bincode_config()).unwrap();
    std::fs::write(tmp.path().join("snapshot"), file).unwrap();
    let sessions = Arc::new(SessionTable::new());
    let sm = StateMachineStore::open(tmp.path(), sessions.clone(), None).unwrap();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sm.down_nodes(), [3]);
    assert_eq!(sm.last_applied(), Some(log_id(1, 3)));

    let other = TempDir::new().unwrap();
    let sessions = Arc::new(SessionTable::new());
    let mut follower = StateMachineStore::open(other.path(), sessions.clone(), None).unwrap();
    follower.install_snapshot(&meta, Box::new(std::io::Cursor::new(data))).await.unwrap();
    assert_eq!(sessions.len(), 1);

    // A format this release does not know is refused, not misread.
    assert!(state_machine::decode_image(&[state_machine::IMAGE_MARKER, 9, 0]).is_err());
}
