//! Shared data in memory, with CAS semantics like Envoy's: for the native tools (`bffgate-config
//! explain` runs the engine on it) and the tests. Never in the shipped `.wasm`.

/// In-memory shared data with CAS semantics like Envoy's, for the native tools and tests.
///
/// Like the wasm shell, it keeps write counts per shard of the session table and a record cache
/// ([`crate::store::RecordCache`]), so every spec that runs on it runs the cached fast path too (a
/// write that forgot to bump its shard would show as a stale session). A clone copies the data
/// and the counts; its cache starts empty (a copy of a VM starts cold).
#[derive(Debug, Default, Clone)]
pub struct MemoryData {
    map: std::collections::HashMap<
        String,
        (Vec<u8>, crate::store::Cas),
        std::hash::BuildHasherDefault<crate::util::IdHasher>,
    >,
    next_cas: crate::store::Cas,
    epochs: Vec<u64>,
    records: crate::store::RecordCache,
    /// Whether `epoch` answers (off: nothing is cached, as on a host without the gauges).
    pub no_epochs: bool,
}

impl MemoryData {
    /// Number of non-empty entries.
    pub fn live_entries(&self) -> usize {
        self.map.values().filter(|(v, _)| !v.is_empty()).count()
    }
    /// Number of keys (empty or not).
    pub fn keys(&self) -> usize {
        self.map.len()
    }
    /// All values (to search them for secrets in tests).
    pub fn values(&self) -> impl Iterator<Item = &[u8]> {
        self.map.values().map(|(v, _)| v.as_slice())
    }
    /// Every key with its value (to hand shared data to another host in tests).
    pub fn entries(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.map
            .iter()
            .map(|(k, (v, _))| (k.as_str(), v.as_slice()))
    }
}

impl crate::store::SharedData for MemoryData {
    fn epoch(&self, shard: u32) -> Option<u64> {
        (!self.no_epochs).then(|| self.epochs.get(shard as usize).copied().unwrap_or(0))
    }
    fn bump(&mut self, shard: u32) {
        let i = shard as usize;
        if self.epochs.len() <= i {
            self.epochs.resize(i + 1, 0);
        }
        if let Some(e) = self.epochs.get_mut(i) {
            *e += 1;
        }
    }
    fn records(&self) -> Option<&crate::store::RecordCache> {
        Some(&self.records)
    }
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<crate::store::Cas>) {
        match self.map.get(key) {
            Some((v, c)) => (Some(v.clone()), Some(*c)),
            None => (None, None),
        }
    }
    fn set(
        &mut self,
        key: &str,
        value: &[u8],
        cas: Option<crate::store::Cas>,
    ) -> Result<(), crate::store::StoreError> {
        // As Envoy does: a CAS of 0 means "no check", and a CAS is only compared against an
        // existing entry (an absent key is always inserted: there is no insert-if-absent).
        if let (Some(want), Some((_, current))) = (cas, self.map.get(key)) {
            if want != 0 && want != *current {
                return Err(crate::store::StoreError::CasMismatch);
            }
        }
        self.next_cas = self.next_cas.wrapping_add(1).max(1);
        self.map
            .insert(key.to_string(), (value.to_vec(), self.next_cas));
        Ok(())
    }
}

/// A store over in-memory data with the slots created, for the native tools and tests.
pub fn memory_store(limits: crate::config::Limits) -> crate::store::SharedStore<MemoryData> {
    use crate::store::SharedStore;
    let mut s = SharedStore::new(MemoryData::default(), limits);
    s.init_slots();
    s
}
