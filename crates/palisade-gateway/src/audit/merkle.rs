//! Merkle tree hashing, proofs and their verification, exactly as RFC 6962 / RFC 9162 §2.1
//! (Certificate Transparency) define them.
//!
//! - leaf hash: `SHA-256(0x00 ‖ entry)`; interior node: `SHA-256(0x01 ‖ left ‖ right)`;
//! - the hash of an empty tree is `SHA-256("")`;
//! - a tree of `n > 1` leaves splits at `k`, the largest power of two smaller than `n`.
//!
//! Everything here is pure and works on leaf hashes, so the same code serves the live log, the
//! API and the offline verifier.

use sha2::{Digest, Sha256};

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// `SHA-256(0x00 ‖ entry)`.
pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(entry);
    h.finalize().into()
}

/// `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The hash of the empty tree, `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// Largest power of two strictly smaller than `n` (`n ≥ 2`).
fn split(n: usize) -> usize {
    debug_assert!(n >= 2);
    let mut k = 1usize;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

/// The Merkle tree hash `MTH(D[0:n])` of a list of leaf hashes.
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// The inclusion proof (audit path) of leaf `index` in the tree of `leaves`, or `None` when the
/// index is outside the tree.
pub fn inclusion_proof(index: usize, leaves: &[Hash]) -> Option<Vec<Hash>> {
    if index >= leaves.len() {
        return None;
    }
    let mut proof = Vec::new();
    path(index, leaves, &mut proof);
    Some(proof)
}

fn path(m: usize, d: &[Hash], out: &mut Vec<Hash>) {
    let n = d.len();
    if n <= 1 {
        return;
    }
    let k = split(n);
    if m < k {
        path(m, &d[..k], out);
        out.push(root(&d[k..]));
    } else {
        path(m - k, &d[k..], out);
        out.push(root(&d[..k]));
    }
}

/// The consistency proof between the tree of the first `first` leaves and the tree of all
/// `leaves`, or `None` when `first` is 0 or larger than the tree.
pub fn consistency_proof(first: usize, leaves: &[Hash]) -> Option<Vec<Hash>> {
    if first == 0 || first > leaves.len() {
        return None;
    }
    let mut proof = Vec::new();
    subproof(first, leaves, true, &mut proof);
    Some(proof)
}

fn subproof(m: usize, d: &[Hash], complete: bool, out: &mut Vec<Hash>) {
    let n = d.len();
    if m == n {
        if !complete {
            out.push(root(d));
        }
        return;
    }
    let k = split(n);
    if m <= k {
        subproof(m, &d[..k], complete, out);
        out.push(root(&d[k..]));
    } else {
        subproof(m - k, &d[k..], false, out);
        out.push(root(&d[..k]));
    }
}

/// `MTH` of the leaves `[a, b)`, from the roots of perfect subtrees that `node(level, index)`
/// gives (the subtree over leaves `[index << level, (index + 1) << level)`; level 0 is a leaf).
/// `a` must be a multiple of a power of two at least `b - a`, as every range the proofs below
/// ask for is: the range is then its binary decomposition into aligned perfect subtrees, largest
/// first, folded from the right. O(log(b - a)) calls of `node`.
pub fn range_root<E>(
    a: u64,
    b: u64,
    node: &mut impl FnMut(u32, u64) -> Result<Hash, E>,
) -> Result<Hash, E> {
    let mut blocks = Vec::new();
    let (mut start, mut len) = (a, b.saturating_sub(a));
    while len > 0 {
        let level = 63 - len.leading_zeros();
        assert_eq!(start % (1 << level), 0, "range [{a}, {b}) is not aligned");
        blocks.push(node(level, start >> level)?);
        start += 1 << level;
        len -= 1 << level;
    }
    let Some(mut acc) = blocks.pop() else {
        return Ok(empty_root());
    };
    while let Some(left) = blocks.pop() {
        acc = node_hash(&left, &acc);
    }
    Ok(acc)
}

/// [`inclusion_proof`] of leaf `index` in the tree of `size` leaves, from subtree roots
/// (see [`range_root`]) rather than from every leaf: O(log² size) calls of `node`.
pub fn inclusion_proof_by<E>(
    index: u64,
    size: u64,
    node: &mut impl FnMut(u32, u64) -> Result<Hash, E>,
) -> Result<Option<Vec<Hash>>, E> {
    if index >= size {
        return Ok(None);
    }
    let mut proof = Vec::new();
    path_by(index, 0, size, node, &mut proof)?;
    Ok(Some(proof))
}

/// `PATH(m, D[a:a+n])`.
fn path_by<E>(
    m: u64,
    a: u64,
    n: u64,
    node: &mut impl FnMut(u32, u64) -> Result<Hash, E>,
    out: &mut Vec<Hash>,
) -> Result<(), E> {
    if n <= 1 {
        return Ok(());
    }
    let k = split(n as usize) as u64;
    if m < k {
        path_by(m, a, k, node, out)?;
        out.push(range_root(a + k, a + n, node)?);
    } else {
        path_by(m - k, a + k, n - k, node, out)?;
        out.push(range_root(a, a + k, node)?);
    }
    Ok(())
}

/// [`consistency_proof`] between the trees of `first` and `size` leaves, from subtree roots
/// (see [`range_root`]).
pub fn consistency_proof_by<E>(
    first: u64,
    size: u64,
    node: &mut impl FnMut(u32, u64) -> Result<Hash, E>,
) -> Result<Option<Vec<Hash>>, E> {
    if first == 0 || first > size {
        return Ok(None);
    }
    let mut proof = Vec::new();
    subproof_by(first, 0, size, true, node, &mut proof)?;
    Ok(Some(proof))
}

/// `SUBPROOF(m, D[a:a+n], complete)`.
fn subproof_by<E>(
    m: u64,
    a: u64,
    n: u64,
    complete: bool,
    node: &mut impl FnMut(u32, u64) -> Result<Hash, E>,
    out: &mut Vec<Hash>,
) -> Result<(), E> {
    if m == n {
        if !complete {
            out.push(range_root(a, a + n, node)?);
        }
        return Ok(());
    }
    let k = split(n as usize) as u64;
    if m <= k {
        subproof_by(m, a, k, complete, node, out)?;
        out.push(range_root(a + k, a + n, node)?);
    } else {
        subproof_by(m - k, a + k, n - k, false, node, out)?;
        out.push(range_root(a, a + k, node)?);
    }
    Ok(())
}

/// Verifies an inclusion proof (RFC 9162 §2.1.3.2): that `leaf` is leaf `index` of the tree of
/// size `size` whose root is `root`.
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && r == *root
}

/// Verifies a consistency proof (RFC 9162 §2.1.4.2): that the tree of size `first` with root
/// `first_root` is a prefix of the tree of size `second` with root `second_root`.
pub fn verify_consistency(
    first: u64,
    second: u64,
    first_root: &Hash,
    second_root: &Hash,
    proof: &[Hash],
) -> bool {
    if first > second {
        return false;
    }
    if first == 0 {
        // Every tree extends the empty tree; there is nothing to prove but that the first root
        // is the empty tree's (else any pair of roots would pass as consistent), and, for an
        // empty second tree, that its root is too (checked before `first == second`, which
        // would take any root as the empty tree's: review, 2026-12-06).
        return proof.is_empty()
            && *first_root == empty_root()
            && (second > 0 || *second_root == empty_root());
    }
    if first == second {
        return proof.is_empty() && first_root == second_root;
    }
    let mut path: Vec<Hash> = proof.to_vec();
    if first.is_power_of_two() {
        path.insert(0, *first_root);
    }
    let Some((c0, rest)) = path.split_first() else {
        return false;
    };
    let (mut fnode, mut snode) = (first - 1, second - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (*c0, *c0);
    for c in rest {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && fr == *first_root && sr == *second_root
}

/// The perfect subtrees whose roots make the right edge of a tree of `size` leaves, largest
/// first, as `(level, index)` (see [`range_root`]): one per set bit of `size`.
pub fn edge(size: u64) -> impl Iterator<Item = (u32, u64)> {
    let mut start = 0u64;
    (0..64u32)
        .rev()
        .filter(move |level| size & (1 << level) != 0)
        .map(move |level| {
            let index = start >> level;
            start += 1 << level;
            (level, index)
        })
}

/// The right edge of a growing tree: the roots of its perfect subtrees, largest first. Appending
/// and computing the root cost O(log n), so the live log never rereads its leaves.
#[derive(Debug, Clone, Default)]
pub struct Frontier {
    /// `(height, hash)` of each perfect subtree, left to right.
    nodes: Vec<(u32, Hash)>,
    size: u64,
}

impl Frontier {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends one leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        self.push_with(leaf, |_, _, _| {});
    }

    /// Appends one leaf hash, calling `made(level, index, hash)` for each perfect subtree it
    /// completes (level 1 and up: the subtree over leaves `[index << level, (index + 1) << level)`).
    pub fn push_with(&mut self, leaf: Hash, mut made: impl FnMut(u32, u64, &Hash)) {
        let last = self.size;
        let mut cur = (0u32, leaf);
        while let Some(&(h, left)) = self.nodes.last() {
            if h != cur.0 {
                break;
            }
            self.nodes.pop();
            cur = (h + 1, node_hash(&left, &cur.1));
            made(cur.0, last >> cur.0, &cur.1);
        }
        self.nodes.push(cur);
        self.size += 1;
    }

    /// The right edge of a tree of `size` leaves from the roots of its perfect subtrees, which
    /// `node(level, index)` gives (as in [`range_root`]): one call per set bit of `size`, so a
    /// stored tree is taken up again without reading its leaves.
    pub fn from_subtrees<E>(
        size: u64,
        node: &mut impl FnMut(u32, u64) -> Result<Hash, E>,
    ) -> Result<Self, E> {
        let nodes = edge(size)
            .map(|(level, index)| Ok((level, node(level, index)?)))
            .collect::<Result<_, E>>()?;
        Ok(Frontier { nodes, size })
    }

    /// The current root (`MTH` of all leaves so far).
    pub fn root(&self) -> Hash {
        let mut it = self.nodes.iter().rev();
        let Some(&(_, mut acc)) = it.next() else {
            return empty_root();
        };
        for (_, left) in it {
            acc = node_hash(left, &acc);
        }
        acc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(format!("entry {i}").as_bytes()))
            .collect()
    }

    /// The proofs from subtree roots equal the proofs from the leaves, for every index and
    /// pair of sizes up to 70, whether the subtrees come from the leaves or from nodes
    /// recorded by `Frontier::push_with` (level 4 and up, as the SQLite log keeps them).
    #[test]
    fn proofs_from_subtree_roots_match_proofs_from_leaves() {
        let all = leaves(70);
        let mut recorded = std::collections::HashMap::new();
        let mut f = Frontier::new();
        for l in &all {
            f.push_with(*l, |level, index, h| {
                recorded.insert((level, index), *h);
            });
        }
        let mut node = |level: u32, index: u64| -> Result<Hash, ()> {
            if level >= 4 {
                return recorded.get(&(level, index)).copied().ok_or(());
            }
            let a = (index << level) as usize;
            Ok(root(&all[a..a + (1 << level)]))
        };
        for size in 1..=70u64 {
            let d = &all[..size as usize];
            assert_eq!(range_root(0, size, &mut node), Ok(root(d)), "{size}");
            for i in 0..size {
                assert_eq!(
                    inclusion_proof_by(i, size, &mut node).unwrap(),
                    inclusion_proof(i as usize, d),
                    "index {i} of {size}"
                );
            }
            for first in 0..=size + 1 {
                assert_eq!(
                    consistency_proof_by(first, size, &mut node).unwrap(),
                    consistency_proof(first as usize, d),
                    "{first} of {size}"
                );
            }
        }
        assert!(inclusion_proof_by(70, 70, &mut node).unwrap().is_none());
        // The right edge rebuilt from subtree roots is the one pushed leaf by leaf: same root,
        // and it goes on the same way.
        let mut pushed = Frontier::new();
        for size in 0..=69u64 {
            let mut f = Frontier::from_subtrees(size, &mut node).unwrap();
            assert_eq!((f.size(), f.root()), (size, pushed.root()), "{size}");
            f.push(all[size as usize]);
            pushed.push(all[size as usize]);
            assert_eq!(f.root(), pushed.root(), "{size} + 1");
        }
        // Every perfect subtree of level >= 1 was reported once, under its index.
        for (&(level, index), h) in &recorded {
            let a = (index << level) as usize;
            assert_eq!(*h, root(&all[a..a + (1 << level)]), "({level}, {index})");
        }
        assert_eq!(recorded.len(), (1..7).map(|l| 70 >> l).sum::<usize>());
    }

    #[test]
    fn rfc6962_empty_and_single() {
        // SHA-256 of the empty string.
        assert_eq!(
            hex(&empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        // Certificate Transparency's test vector: the leaf hash of the empty entry.
        assert_eq!(
            hex(&leaf_hash(b"")),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
    }

    fn hex(h: &Hash) -> String {
        h.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn frontier_matches_recursive_root() {
        let l = leaves(70);
        let mut f = Frontier::new();
        assert_eq!(f.root(), root(&[]));
        for n in 1..=l.len() {
            f.push(l[n - 1]);
            assert_eq!(f.root(), root(&l[..n]), "size {n}");
        }
    }

    #[test]
    fn inclusion_proofs_verify_and_reject_tampering() {
        let l = leaves(37);
        for n in 1..=l.len() {
            let r = root(&l[..n]);
            for i in 0..n {
                let p = inclusion_proof(i, &l[..n]).unwrap();
                assert!(
                    verify_inclusion(i as u64, n as u64, &l[i], &p, &r),
                    "{i}/{n}"
                );
                let other = leaf_hash(b"forged");
                assert!(!verify_inclusion(i as u64, n as u64, &other, &p, &r));
                if !p.is_empty() {
                    let mut bad = p.clone();
                    bad[0][0] ^= 1;
                    assert!(!verify_inclusion(i as u64, n as u64, &l[i], &bad, &r));
                }
            }
            assert!(inclusion_proof(n, &l[..n]).is_none());
        }
    }

    #[test]
    fn consistency_proofs_verify_and_reject_tampering() {
        let l = leaves(33);
        for n in 1..=l.len() {
            let rn = root(&l[..n]);
            for m in 1..=n {
                let rm = root(&l[..m]);
                let p = consistency_proof(m, &l[..n]).unwrap();
                assert!(
                    verify_consistency(m as u64, n as u64, &rm, &rn, &p),
                    "{m}/{n}"
                );
                if m < n {
                    let mut other = l[..n].to_vec();
                    other[m - 1] = leaf_hash(b"rewritten history");
                    let forged_old = root(&other[..m]);
                    assert!(!verify_consistency(
                        m as u64,
                        n as u64,
                        &forged_old,
                        &rn,
                        &p
                    ));
                    for k in 0..p.len() {
                        let mut bad = p.clone();
                        bad[k][5] ^= 0x40;
                        assert!(!verify_consistency(m as u64, n as u64, &rm, &rn, &bad));
                    }
                }
            }
        }
    }

    #[test]
    fn from_the_empty_tree_only_the_empty_root_is_consistent() {
        let other = [0xaa; 32];
        assert!(verify_consistency(0, 5, &empty_root(), &[0xbb; 32], &[]));
        assert!(!verify_consistency(0, 5, &other, &[0xbb; 32], &[]));
        assert!(!verify_consistency(
            0,
            5,
            &empty_root(),
            &[0xbb; 32],
            &[other]
        ));
    }

    #[test]
    fn the_empty_tree_is_consistent_with_itself_only_under_the_empty_root() {
        let other = [0xaa; 32];
        assert!(verify_consistency(0, 0, &empty_root(), &empty_root(), &[]));
        assert!(!verify_consistency(0, 0, &other, &other, &[]));
        assert!(!verify_consistency(0, 0, &empty_root(), &other, &[]));
    }

    /// A proof verifies only for the index, leaf and sizes it was made for, and only whole.
    #[test]
    fn proofs_are_bound_to_their_index_leaf_and_sizes() {
        let l = leaves(24);
        for n in 1..=l.len() {
            let r = root(&l[..n]);
            for i in 0..n {
                let p = inclusion_proof(i, &l[..n]).unwrap();
                for j in (0..n + 2).filter(|&j| j != i) {
                    assert!(
                        !verify_inclusion(j as u64, n as u64, &l[i], &p, &r),
                        "{i} as {j} of {n}"
                    );
                    if j < n {
                        assert!(
                            !verify_inclusion(i as u64, n as u64, &l[j], &p, &r),
                            "leaf {j} at {i} of {n}"
                        );
                    }
                }
            }
            for m in 1..=n {
                let p = consistency_proof(m, &l[..n]).unwrap();
                let rm = root(&l[..m]);
                for m2 in (1..=n).filter(|&m2| m2 != m) {
                    let rm2 = root(&l[..m2]);
                    assert!(
                        !verify_consistency(m2 as u64, n as u64, &rm2, &r, &p),
                        "{m} as {m2} of {n}"
                    );
                }
                if let Some((_, shorter)) = p.split_last() {
                    assert!(
                        !verify_consistency(m as u64, n as u64, &rm, &r, shorter),
                        "{m} of {n}, cut"
                    );
                }
                let longer = [&p[..], &[r]].concat();
                assert!(
                    !verify_consistency(m as u64, n as u64, &rm, &r, &longer),
                    "{m} of {n}, extended"
                );
            }
        }
    }
}
