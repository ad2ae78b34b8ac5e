//! Persistent Raft storage (openraft storage v2).
//!
//! - [`LogStore`]: the Raft log and vote, in an append-only file written by
//!   one thread with group commit (see [`log`]).
//! - [`StateMachineStore`]: the [`Registry`](crate::registry::Registry) and
//!   the membership, persisted as snapshots (see [`state_machine`]).
//!
//! Both may share one directory: their file names do not collide.

pub mod log;
pub mod state_machine;

#[cfg(test)]
mod tests;

pub use log::{LogReader, LogStore};
pub use state_machine::{SnapshotImage, SnapshotImageV1, StateMachineStore};
