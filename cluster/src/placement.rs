//! Placing work on the cluster's members by a hash of its key.

use crate::NodeId;

/// Rendezvous (highest random weight) placement: the node of `nodes` whose
/// hash with `key` is highest. Stable across runs and builds (FNV-1a, then a
/// 64-bit finaliser), so every node computes the same owner from the same
/// members; when a node goes, only the keys it had move. `None` for no nodes.
pub fn rendezvous(key: &str, nodes: &[NodeId]) -> Option<NodeId> {
    fn mix(mut h: u64) -> u64 {
        // splitmix64's finaliser: spreads FNV's weak low bits.
        h ^= h >> 30;
        h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h ^= h >> 27;
        h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^ (h >> 31)
    }
    let mut base: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        base ^= u64::from(*b);
        base = base.wrapping_mul(0x0000_0100_0000_01b3);
    }
    nodes.iter().copied().max_by_key(|n| (mix(base ^ mix(n.0)), n.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_keys_of_a_node_that_leaves_move() {
        let three = [NodeId(1), NodeId(2), NodeId(3)];
        let two = [NodeId(1), NodeId(2)];
        let keys: Vec<String> = (0..3000).map(|i| format!("user{i}@example.org")).collect();
        let mut per_node = [0usize; 3];
        for k in &keys {
            let owner = rendezvous(k, &three).unwrap_or(NodeId(0));
            per_node[(owner.0 - 1) as usize] += 1;
            let after = rendezvous(k, &two).unwrap_or(NodeId(0));
            if owner != NodeId(3) {
                assert_eq!(after, owner, "{k} moved though its node stayed");
            }
        }
        // Spread evenly enough: each node has a third, give or take a tenth of it.
        for n in per_node {
            assert!((900..=1100).contains(&n), "{per_node:?}");
        }
        assert_eq!(rendezvous("x", &[]), None);
        assert_eq!(rendezvous("x", &[NodeId(7)]), Some(NodeId(7)));
    }
}
