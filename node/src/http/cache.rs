//! Recently viewed instances' plaintext, kept in memory while the server runs.
//!
//! A viewer asks for the same slice again and again: a PNG and then a JPEG of it, every step of
//! a window/level drag, the slices around it while scrolling back and forth, its raw frame for
//! client-side rendering. Each time the instance would be read, decrypted and checked again
//! (about 0.5 ms for a 512 KiB CT slice, most of what rendering it takes). Orthanc keeps a
//! storage cache for the same reason.
//!
//! Only verified plaintext goes in (every chunk authenticated, plaintext hash checked), keyed
//! by blob id: a content address, so an entry can never stand for other bytes. The memory is
//! bounded and the least recently used entries go first; an instance larger than a quarter of
//! the budget is never kept (one large multi-frame object would flush everything else). The
//! plaintext is zeroed when its last user drops it, so it does not linger in freed memory.
//! Zeroing is slow (byte by byte, which the compiler may not elide: 0.13 ms for a 512 KiB
//! slice), so evicted entries are dropped on a thread of their own, not under the lock nor in
//! the request that evicted them.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};

use zeroize::Zeroizing;

use crate::crypto::blob::InPlace;

/// Cached plaintext, shared with the requests that use it.
pub(crate) type Plaintext = Arc<Zeroizing<InPlace>>;

/// Memory for cached plaintext: 128 slices of a 512×512 CT.
pub(crate) const DEFAULT_BYTES: usize = 64 << 20;

/// A bounded least-recently-used map from blob id to plaintext.
#[derive(Debug)]
pub(crate) struct PlaintextCache {
    capacity: usize,
    inner: Mutex<Inner>,
    /// To the thread that drops evicted entries; it ends when the cache is dropped.
    evicted: Option<mpsc::Sender<Plaintext>>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    bytes: usize,
    /// Incremented on every use; an entry's `used` is the tick of its last use.
    tick: u64,
}

#[derive(Debug)]
struct Entry {
    plaintext: Plaintext,
    used: u64,
}

impl PlaintextCache {
    pub(crate) fn new(capacity: usize) -> Self {
        let (tx, rx) = mpsc::channel::<Plaintext>();
        // Without the thread, evicted entries are dropped in place: slower, still correct.
        let dropper = std::thread::Builder::new()
            .name("plaintext-zeroize".into())
            .spawn(move || rx.into_iter().for_each(drop));
        Self {
            capacity,
            inner: Mutex::default(),
            evicted: dropper.ok().map(|_| tx),
        }
    }

    /// The plaintext of blob `blob_id`, from the cache or else from `load`, which is then kept.
    /// `load` runs outside the lock: two requests for the same new instance may both load it.
    pub(crate) fn get_or_load<E>(
        &self,
        blob_id: &str,
        load: impl FnOnce() -> Result<InPlace, E>,
    ) -> Result<Plaintext, E> {
        if let Some(hit) = self.get(blob_id) {
            return Ok(hit);
        }
        let plaintext = Arc::new(Zeroizing::new(load()?));
        self.insert(blob_id, plaintext.clone());
        Ok(plaintext)
    }

    fn get(&self, blob_id: &str) -> Option<Plaintext> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.tick += 1;
        let tick = inner.tick;
        let entry = inner.entries.get_mut(blob_id)?;
        entry.used = tick;
        Some(entry.plaintext.clone())
    }

    fn insert(&self, blob_id: &str, plaintext: Plaintext) {
        let len = plaintext.len();
        if len > self.capacity / 4 {
            return;
        }
        let mut gone = Vec::new();
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.tick += 1;
        let used = inner.tick;
        if let Some(old) = inner
            .entries
            .insert(blob_id.to_string(), Entry { plaintext, used })
        {
            inner.bytes -= old.plaintext.len();
            gone.push(old.plaintext);
        }
        inner.bytes += len;
        // A scan for the oldest: the cache holds at most a few hundred entries.
        while inner.bytes > self.capacity {
            let Some(oldest) = inner
                .entries
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(id, _)| id.clone())
            else {
                break;
            };
            if let Some(entry) = inner.entries.remove(&oldest) {
                inner.bytes -= entry.plaintext.len();
                gone.push(entry.plaintext);
            }
        }
        drop(inner);
        for plaintext in gone {
            if let Some(tx) = &self.evicted {
                // A closed channel hands the entry back in its error, dropped right here.
                let _ = tx.send(plaintext);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(n: usize) -> impl FnOnce() -> Result<InPlace, ()> {
        move || Ok(vec![7; n].into())
    }

    #[test]
    fn hits_skip_the_load_and_the_least_recently_used_goes_first() {
        let cache = PlaintextCache::new(240);
        let a = cache.get_or_load("a", load(60)).unwrap();
        cache.get_or_load("b", load(60)).unwrap();
        cache.get_or_load("c", load(60)).unwrap();
        // A hit returns the same allocation and never calls the loader.
        let again = cache
            .get_or_load("a", || -> Result<InPlace, ()> { panic!("loaded again") })
            .unwrap();
        assert!(Arc::ptr_eq(&a, &again));
        // 4 × 60 fits; 10 more does not, and "b", the least recently used, goes.
        cache.get_or_load("d", load(60)).unwrap();
        cache.get_or_load("e", load(10)).unwrap();
        let inner = cache.inner.lock().unwrap();
        let mut ids: Vec<_> = inner.entries.keys().cloned().collect();
        ids.sort();
        assert_eq!(ids, ["a", "c", "d", "e"]);
        assert_eq!(inner.bytes, 190);
    }

    /// Evicted entries are dropped (and so zeroed) on the cache's own thread, not kept.
    #[test]
    fn evicted_entries_are_dropped() {
        let cache = PlaintextCache::new(100);
        let first = Arc::downgrade(&cache.get_or_load("a", load(25)).unwrap());
        for id in ["b", "c", "d", "e"] {
            cache.get_or_load(id, load(25)).unwrap();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while first.upgrade().is_some() {
            assert!(std::time::Instant::now() < deadline, "never dropped");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!cache.inner.lock().unwrap().entries.contains_key("a"));
    }

    #[test]
    fn large_instances_and_failed_loads_are_not_kept() {
        let cache = PlaintextCache::new(100);
        assert_eq!(cache.get_or_load("big", load(26)).unwrap().len(), 26);
        assert!(cache
            .get_or_load("bad", || Err::<InPlace, _>("corrupt"))
            .is_err());
        let inner = cache.inner.lock().unwrap();
        assert!(inner.entries.is_empty());
        assert_eq!(inner.bytes, 0);
    }
}
