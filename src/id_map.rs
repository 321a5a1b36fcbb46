//! A map from short string ids to small values, for the core's per-auction
//! state, which holds one entry per decided bid and per winning bidder: a
//! million of each in a large run.
//!
//! A `HashMap<Box<str>, V>` spends a 16-byte key and a heap allocation of
//! its own on every id. Here every key's bytes lie back to back in one
//! buffer, and the table holds only where (offset and length) and the
//! value: 24 bytes for a decided bid, 12 for a win count.

use std::hash::BuildHasher;

use hashbrown::hash_table::{Entry, HashTable};

/// Ids to values; ids are never removed (the core keeps every decided bid).
#[derive(Clone)]
pub(crate) struct IdMap<V> {
    /// Every key's bytes, back to back.
    bytes: Vec<u8>,
    /// (offset in `bytes`, length, value).
    table: HashTable<(u32, u32, V)>,
    /// Seeded per process, as the core's other maps: no decision depends
    /// on the table's order.
    hasher: foldhash::fast::RandomState,
}

impl<V> Default for IdMap<V> {
    fn default() -> Self {
        IdMap {
            bytes: Vec::new(),
            table: HashTable::new(),
            hasher: Default::default(),
        }
    }
}

impl<V: std::fmt::Debug> std::fmt::Debug for IdMap<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(
                self.table
                    .iter()
                    .map(|(at, len, v)| (key(&self.bytes, *at, *len), v)),
            )
            .finish()
    }
}

/// The key stored at `at`, `len` bytes long.
fn key(bytes: &[u8], at: u32, len: u32) -> &[u8] {
    &bytes[at as usize..at as usize + len as usize]
}

impl<V> IdMap<V> {
    pub(crate) fn get(&self, id: &str) -> Option<&V> {
        let hash = self.hasher.hash_one(id.as_bytes());
        let bytes = &self.bytes;
        self.table
            .find(hash, |&(at, len, _)| key(bytes, at, len) == id.as_bytes())
            .map(|(_, _, v)| v)
    }

    pub(crate) fn contains_key(&self, id: &str) -> bool {
        self.get(id).is_some()
    }

    /// The value of `id`, inserted by `make` if the id is new.
    pub(crate) fn get_or_insert_with(&mut self, id: &str, make: impl FnOnce() -> V) -> &mut V {
        let hasher = &self.hasher;
        let hash = hasher.hash_one(id.as_bytes());
        let bytes = &mut self.bytes;
        let found = self.table.entry(
            hash,
            |&(at, len, _)| key(bytes, at, len) == id.as_bytes(),
            |&(at, len, _)| hasher.hash_one(key(bytes, at, len)),
        );
        match found {
            Entry::Occupied(entry) => &mut entry.into_mut().2,
            Entry::Vacant(entry) => {
                // An auction's ids stay far below 4 GiB: ids are at most a
                // few hundred bytes, and each is a bid in the log.
                let at = u32::try_from(bytes.len()).expect("an auction's ids fit in 4 GiB");
                let len = u32::try_from(id.len()).expect("ids are short");
                bytes.extend_from_slice(id.as_bytes());
                &mut entry.insert((at, len, make())).into_mut().2
            }
        }
    }

    /// Sets the value of `id`.
    pub(crate) fn insert(&mut self, id: &str, value: V) {
        let mut value = Some(value);
        let slot = self.get_or_insert_with(id, || value.take().expect("taken once"));
        if let Some(value) = value {
            *slot = value;
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    proptest! {
        /// Whatever the ids and their order, the map answers as a
        /// `HashMap` does.
        #[test]
        fn agrees_with_a_hash_map(ops in proptest::collection::vec(("[a-c]{0,4}", 0u32..5, any::<bool>()), 0..200)) {
            let mut ours = IdMap::default();
            let mut reference = HashMap::new();
            for (id, value, add) in &ops {
                if *add {
                    *ours.get_or_insert_with(id, || 0) += value;
                    *reference.entry(id.clone()).or_insert(0) += value;
                } else {
                    ours.insert(id, *value);
                    reference.insert(id.clone(), *value);
                }
            }
            prop_assert_eq!(ours.len(), reference.len());
            for (id, value) in &reference {
                prop_assert_eq!(ours.get(id), Some(value));
            }
            prop_assert_eq!(ours.get("not-an-id"), None);
            let cloned = ours.clone();
            for (id, value) in &reference {
                prop_assert_eq!(cloned.get(id), Some(value));
            }
        }
    }
}
