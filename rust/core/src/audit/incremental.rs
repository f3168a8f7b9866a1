//! BLAKE3 of successive versions of one document, rehashing only what a
//! version does not share with the version hashed before it.
//!
//! BLAKE3 is a binary tree over 1 KiB chunks: the left subtree of every node
//! spans the largest power of two of chunks below the node's length, so every
//! left subtree is a whole, aligned power-of-two run of chunks, and its
//! chaining value depends on its bytes and its position only, never on what
//! follows it. [`TreeCache`] keeps the chaining values of the aligned runs of
//! [`BLOCK`] bytes and of every power of two of them; a new version that
//! shares its first `common` bytes with the cached one reuses every run that
//! lies inside them and hashes the rest: an append to a 1 MiB document
//! rehashes its last block and merges along the tree's right edge, a
//! whole-document rewrite hashes everything, at BLAKE3's full speed. The
//! result is always `blake3::hash` of the version (tested against it).

use blake3::hazmat::{self, ChainingValue, HasherExt, Mode};

use super::Hash;

const CHUNK: usize = 1024;
/// The shortest run of bytes whose chaining value is kept: 16 chunks, the
/// widest SIMD degree of the `blake3` crate, so a run rehashed whole costs
/// about what one chunk does.
pub const BLOCK: usize = 16 * CHUNK;

/// The chaining values of the aligned runs of one version of a document.
#[derive(Debug, Default, Clone)]
pub struct TreeCache {
    /// `levels[k][j]`: the chaining value of bytes `j * (BLOCK << k) ..
    /// (j + 1) * (BLOCK << k)` of the version cached; each level holds the
    /// runs from the first on, with no gap.
    levels: Vec<Vec<ChainingValue>>,
}

impl TreeCache {
    /// An empty cache (the first version is hashed whole).
    pub fn new() -> Self {
        Self::default()
    }

    /// Chaining values kept (each 32 bytes).
    pub fn len(&self) -> usize {
        self.levels.iter().map(Vec::len).sum()
    }

    /// True when nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// BLAKE3 of `data`, a new version whose first `common` bytes are those
    /// of the version cached (0: nothing in common); afterwards the cache
    /// holds `data`'s runs.
    pub fn hash(&mut self, common: usize, data: &[u8]) -> Hash {
        let common = common.min(data.len());
        for (k, level) in self.levels.iter_mut().enumerate() {
            level.truncate(common / (BLOCK << k));
        }
        if data.len() <= CHUNK {
            return *blake3::hash(data).as_bytes();
        }
        let left = left_len(data.len());
        let l = self.subtree(data, 0, left);
        let r = self.subtree(data, left, data.len() - left);
        *hazmat::merge_subtrees_root(&l, &r, Mode::Hash).as_bytes()
    }

    /// The non-root chaining value of `data[start .. start + len]`, a subtree
    /// of the tree of `data` (`len > 0`).
    fn subtree(&mut self, data: &[u8], start: usize, len: usize) -> ChainingValue {
        if len >= BLOCK && len.is_power_of_two() && start % len == 0 {
            let k = (len / BLOCK).trailing_zeros() as usize;
            let j = start / len;
            if let Some(cv) = self.levels.get(k).and_then(|level| level.get(j)) {
                return *cv;
            }
            let cv = if k == 0 {
                hash_run(data, start, len)
            } else {
                let half = len / 2;
                let l = self.subtree(data, start, half);
                let r = self.subtree(data, start + half, half);
                hazmat::merge_subtrees_non_root(&l, &r, Mode::Hash)
            };
            if self.levels.len() <= k {
                self.levels.resize_with(k + 1, Vec::new);
            }
            if self.levels[k].len() == j {
                self.levels[k].push(cv);
            }
            return cv;
        }
        if len <= BLOCK {
            return hash_run(data, start, len);
        }
        let left = left_len(len);
        let l = self.subtree(data, start, left);
        let r = self.subtree(data, start + left, len - left);
        hazmat::merge_subtrees_non_root(&l, &r, Mode::Hash)
    }
}

/// The length of the left subtree of a node of `len` bytes (`len > CHUNK`).
fn left_len(len: usize) -> usize {
    // A usize always fits a u64, and the result is below `len`.
    usize::try_from(hazmat::left_subtree_len(len as u64)).unwrap_or(len / 2)
}

/// The non-root chaining value of a subtree hashed whole.
fn hash_run(data: &[u8], start: usize, len: usize) -> ChainingValue {
    let mut h = blake3::Hasher::new();
    h.set_input_offset(start as u64);
    h.update(&data[start..start + len]);
    h.finalize_non_root()
}

/// How many leading bytes `a` and `b` share.
pub fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let mut i = 0;
    // Whole steps compared as slices (memcmp), long ones first, then the
    // differing step byte by byte.
    for step in [1 << 14, 1 << 8] {
        while i + step <= n && a[i..i + step] == b[i..i + step] {
            i += step;
        }
    }
    while i < n && a[i] == b[i] {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check(cache: &mut TreeCache, prev: &[u8], data: &[u8]) {
        let common = common_prefix(prev, data);
        assert_eq!(
            cache.hash(common, data),
            *blake3::hash(data).as_bytes(),
            "len {}",
            data.len()
        );
    }

    #[test]
    fn lengths_around_chunk_and_block_edges() {
        let base: Vec<u8> = (0..(9 * BLOCK + 3 * CHUNK))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let mut cache = TreeCache::new();
        let mut prev: Vec<u8> = Vec::new();
        for n in [
            0,
            1,
            CHUNK - 1,
            CHUNK,
            CHUNK + 1,
            BLOCK - 1,
            BLOCK,
            BLOCK + 1,
            2 * BLOCK,
            2 * BLOCK + 1,
            4 * BLOCK,
            4 * BLOCK - 1,
            4 * BLOCK + CHUNK,
            8 * BLOCK,
            9 * BLOCK + 3 * CHUNK,
            3 * BLOCK,
            BLOCK,
            9 * BLOCK,
        ] {
            let data = &base[..n];
            check(&mut cache, &prev, data);
            prev = data.to_vec();
        }
    }

    #[test]
    fn appends_reuse_the_runs_before_them() {
        let mut data: Vec<u8> = (0..(40 * BLOCK)).map(|i| (i % 253) as u8).collect();
        let mut cache = TreeCache::new();
        check(&mut cache, &[], &data);
        let kept = cache.len();
        assert_eq!(kept, 40 + 20 + 10 + 5 + 2 + 1);
        let prev = data.clone();
        data.extend_from_slice(b"one more line\n");
        check(&mut cache, &prev, &data);
        assert!(cache.len() >= kept);
        // A change in the first byte rehashes everything, and still agrees.
        let prev = data.clone();
        data[0] ^= 1;
        check(&mut cache, &prev, &data);
    }

    #[test]
    fn a_wrong_common_prefix_is_the_callers_error_not_a_panic() {
        // Claiming more in common than there is gives a wrong hash (the
        // caller computes it with common_prefix), never a panic.
        let a = vec![1u8; 3 * BLOCK];
        let b = vec![2u8; 3 * BLOCK];
        let mut cache = TreeCache::new();
        cache.hash(0, &a);
        let _ = cache.hash(usize::MAX, &b);
    }

    #[test]
    fn common_prefix_of_slices() {
        assert_eq!(common_prefix(b"", b"abc"), 0);
        assert_eq!(common_prefix(b"abc", b"abd"), 2);
        let a = vec![5u8; 1000];
        let mut b = a.clone();
        assert_eq!(common_prefix(&a, &b), 1000);
        b[700] = 6;
        assert_eq!(common_prefix(&a, &b), 700);
        assert_eq!(common_prefix(&a[..300], &b), 300);
    }

    #[derive(Debug, Clone)]
    enum Edit {
        Insert(usize, Vec<u8>),
        Delete(usize, usize),
        Append(Vec<u8>),
        Truncate(usize),
    }

    fn edit() -> impl Strategy<Value = Edit> {
        prop_oneof![
            (any::<usize>(), prop::collection::vec(any::<u8>(), 0..3000))
                .prop_map(|(at, s)| Edit::Insert(at, s)),
            (any::<usize>(), 0usize..40_000).prop_map(|(at, n)| Edit::Delete(at, n)),
            prop::collection::vec(any::<u8>(), 0..20_000).prop_map(Edit::Append),
            any::<usize>().prop_map(Edit::Truncate),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn every_version_hashes_as_blake3(
            start in 0usize..200_000,
            edits in prop::collection::vec(edit(), 1..12),
        ) {
            let mut data: Vec<u8> = (0..start).map(|i| (i % 241) as u8).collect();
            let mut cache = TreeCache::new();
            check(&mut cache, &[], &data);
            for e in edits {
                let prev = data.clone();
                match e {
                    Edit::Insert(at, s) => {
                        let at = at % (data.len() + 1);
                        data.splice(at..at, s);
                    }
                    Edit::Delete(at, n) => {
                        let at = at % (data.len() + 1);
                        let end = (at + n).min(data.len());
                        data.drain(at..end);
                    }
                    Edit::Append(s) => data.extend_from_slice(&s),
                    Edit::Truncate(n) => data.truncate(n % (data.len() + 1)),
                }
                check(&mut cache, &prev, &data);
            }
        }
    }
}
