//! Serving the last good answer, marked stale with its age, when a fresh one cannot be had.
//!
//! A [`FallbackCache`] remembers, per key, the last value a call returned successfully and
//! when. [`FallbackCache::serve`] passes a successful result through (remembering it) and
//! turns a failure into the remembered value with its age, if there is one. Degrading to
//! an old answer that says it is old is often better than an error page; saying how old
//! lets the caller (or the user) judge.
//!
//! In memory, age is measured on tokio's clock. With [`FallbackCache::persistent`], every
//! stored value is also written to a directory, one JSON file per key, replaced
//! atomically (a temporary file in the same directory, synced, then renamed), so the next
//! run of a CLI can still serve the previous run's answer. Across runs the age can only be
//! measured on the system clock, the one clock both runs share; a clock set backwards
//! gives an age of zero, not a negative one.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use thiserror::Error;
use tokio::time::Instant;

/// A remembered value and its age.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stale<T> {
    /// The last good value.
    pub value: T,
    /// How long ago it was stored.
    pub age: Duration,
}

/// What [`FallbackCache::serve`] hands back: a fresh value, or a stale one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer<T> {
    /// The call succeeded just now.
    Fresh(T),
    /// The call failed; this is the last good value.
    Stale(Stale<T>),
}

impl<T> Answer<T> {
    /// The value, fresh or not.
    pub fn value(&self) -> &T {
        match self {
            Answer::Fresh(value) | Answer::Stale(Stale { value, .. }) => value,
        }
    }

    /// The value, fresh or not.
    pub fn into_value(self) -> T {
        match self {
            Answer::Fresh(value) | Answer::Stale(Stale { value, .. }) => value,
        }
    }

    /// The age of a stale value; `None` when fresh.
    pub fn stale_age(&self) -> Option<Duration> {
        match self {
            Answer::Fresh(_) => None,
            Answer::Stale(stale) => Some(stale.age),
        }
    }
}

/// A fallback store that could not be read or written.
#[derive(Debug, Error)]
pub enum FallbackError {
    /// The directory or a file in it could not be created, read or written.
    #[error("fallback cache {}: {source}", path.display())]
    Io {
        /// The directory or file.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// A cache file is not JSON of the expected shape (delete it to start over).
    #[error("fallback cache file {} is not a valid entry: {source}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        source: serde_json::Error,
    },
}

/// The last good value per key, in memory and optionally on disk.
#[derive(Debug)]
pub struct FallbackCache<T> {
    memory: Mutex<HashMap<String, Entry<T>>>,
    dir: Option<PathBuf>,
    wall_clock: fn() -> SystemTime,
}

#[derive(Debug, Clone)]
struct Entry<T> {
    value: T,
    since: Since,
}

/// When an entry was stored, on the clock that can tell.
#[derive(Debug, Clone, Copy)]
enum Since {
    /// Stored by this process.
    At(Instant),
    /// Read from disk at `loaded`, already `age` old then.
    Loaded { age: Duration, loaded: Instant },
}

impl Since {
    fn age(self) -> Duration {
        match self {
            Since::At(at) => at.elapsed(),
            Since::Loaded { age, loaded } => age + loaded.elapsed(),
        }
    }
}

/// The file format: the key is kept to tell two keys with the same file name apart.
#[derive(Serialize)]
struct RecordOut<'a, T> {
    key: &'a str,
    stored_at_unix_ms: u64,
    value: &'a T,
}

#[derive(Deserialize)]
struct RecordIn<T> {
    key: String,
    stored_at_unix_ms: u64,
    value: T,
}

impl<T: Clone + Serialize + DeserializeOwned> FallbackCache<T> {
    /// A cache that forgets everything when the process ends.
    pub fn in_memory() -> Self {
        FallbackCache {
            memory: Mutex::new(HashMap::new()),
            dir: None,
            wall_clock: SystemTime::now,
        }
    }

    /// A cache that also keeps every value in `dir` (created if missing).
    pub fn persistent(dir: impl Into<PathBuf>) -> Result<Self, FallbackError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|source| FallbackError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(FallbackCache {
            dir: Some(dir),
            ..Self::in_memory()
        })
    }

    /// Remembers `value` as the last good answer for `key`. The value is kept in memory
    /// even if writing it to disk fails.
    pub fn store(&self, key: &str, value: T) -> Result<(), FallbackError> {
        let written = match &self.dir {
            Some(dir) => self.write(dir, key, &value),
            None => Ok(()),
        };
        let entry = Entry {
            value,
            since: Since::At(Instant::now()),
        };
        self.lock().insert(key.to_owned(), entry);
        written
    }

    /// The last good answer for `key` and its age, if there is one: from memory, else
    /// from the directory.
    pub fn stale(&self, key: &str) -> Result<Option<Stale<T>>, FallbackError> {
        if let Some(entry) = self.lock().get(key) {
            return Ok(Some(stale_of(entry)));
        }
        let Some(entry) = self.load(key)? else {
            return Ok(None);
        };
        let stale = stale_of(&entry);
        self.lock().entry(key.to_owned()).or_insert(entry);
        Ok(Some(stale))
    }

    /// Passes a good result through, remembering it; replaces a failure with the last
    /// good answer if there is one. Trouble with the directory does not change the
    /// answer (a fresh value is still fresh; an unreadable file is no fallback) and is
    /// logged as a warning.
    pub fn serve<E>(&self, key: &str, result: Result<T, E>) -> Result<Answer<T>, E> {
        match result {
            Ok(value) => {
                if let Err(error) = self.store(key, value.clone()) {
                    tracing::warn!(%error, key, "fallback value not persisted");
                }
                Ok(Answer::Fresh(value))
            }
            Err(failure) => match self.stale(key) {
                Ok(Some(stale)) => Ok(Answer::Stale(stale)),
                Ok(None) => Err(failure),
                Err(error) => {
                    tracing::warn!(%error, key, "fallback value unreadable");
                    Err(failure)
                }
            },
        }
    }

    /// The file that holds `key`, if the cache is persistent.
    pub fn path_of(&self, key: &str) -> Option<PathBuf> {
        self.dir.as_deref().map(|dir| dir.join(file_name(key)))
    }

    fn write(&self, dir: &Path, key: &str, value: &T) -> Result<(), FallbackError> {
        let path = dir.join(file_name(key));
        let io_err = |source| FallbackError::Io {
            path: path.clone(),
            source,
        };
        let record = RecordOut {
            key,
            stored_at_unix_ms: unix_ms(self.wall_clock()),
            value,
        };
        let json = serde_json::to_vec(&record).map_err(|e| io_err(io::Error::other(e)))?;
        let mut file = tempfile::NamedTempFile::new_in(dir).map_err(io_err)?;
        file.write_all(&json).map_err(io_err)?;
        file.as_file().sync_all().map_err(io_err)?;
        file.persist(&path).map_err(|e| io_err(e.error))?;
        Ok(())
    }

    fn load(&self, key: &str) -> Result<Option<Entry<T>>, FallbackError> {
        let Some(path) = self.path_of(key) else {
            return Ok(None);
        };
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(FallbackError::Io { path, source }),
        };
        let record: RecordIn<T> = serde_json::from_slice(&bytes)
            .map_err(|source| FallbackError::Corrupt { path, source })?;
        if record.key != key {
            return Ok(None);
        }
        let age = Duration::from_millis(unix_ms(self.wall_clock()))
            .saturating_sub(Duration::from_millis(record.stored_at_unix_ms));
        Ok(Some(Entry {
            value: record.value,
            since: Since::Loaded {
                age,
                loaded: Instant::now(),
            },
        }))
    }

    fn wall_clock(&self) -> SystemTime {
        (self.wall_clock)()
    }

    /// Replaces the system clock used for ages across runs.
    #[cfg(test)]
    fn with_wall_clock(mut self, clock: fn() -> SystemTime) -> Self {
        self.wall_clock = clock;
        self
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry<T>>> {
        // Inserts and reads are single operations on the map; a panic elsewhere cannot
        // leave it half-changed.
        self.memory.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn stale_of<T: Clone>(entry: &Entry<T>) -> Stale<T> {
    Stale {
        value: entry.value.clone(),
        age: entry.since.age(),
    }
}

fn unix_ms(at: SystemTime) -> u64 {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// A file name for any key: its safe characters (for a reader of the directory), then a
/// hash of the whole key (so different keys get different files).
fn file_name(key: &str) -> String {
    let readable: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    format!("{readable}-{:016x}.json", fnv1a(key.as_bytes()))
}

/// FNV-1a, 64 bits. Written here because the name must stay the same across builds and
/// Rust versions, which std's `DefaultHasher` does not promise.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    fn earlier() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn ninety_seconds_later() -> SystemTime {
        earlier() + Duration::from_secs(90)
    }

    #[tokio::test(start_paused = true)]
    async fn stale_value_carries_its_age() {
        let cache = FallbackCache::in_memory();
        assert_eq!(cache.stale("k").expect("memory"), None);
        cache.store("k", vec![1, 2, 3]).expect("memory");
        advance(Duration::from_secs(42)).await;
        assert_eq!(
            cache.stale("k").expect("memory"),
            Some(Stale {
                value: vec![1, 2, 3],
                age: Duration::from_secs(42)
            })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn serve_passes_fresh_values_and_replaces_failures() {
        let cache = FallbackCache::in_memory();
        let none: Result<Answer<u32>, &str> = cache.serve("k", Err("down"));
        assert_eq!(none, Err("down"), "no fallback yet");
        assert_eq!(cache.serve::<&str>("k", Ok(5)), Ok(Answer::Fresh(5)));
        advance(Duration::from_secs(3)).await;
        let answer = cache.serve("k", Err("down")).expect("fallback");
        assert_eq!(answer.stale_age(), Some(Duration::from_secs(3)));
        assert_eq!(answer.into_value(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn newer_values_replace_older_ones() {
        let cache = FallbackCache::in_memory();
        cache.store("k", 1).expect("memory");
        advance(Duration::from_secs(10)).await;
        cache.store("k", 2).expect("memory");
        let stale = cache.stale("k").expect("memory").expect("a value");
        assert_eq!((stale.value, stale.age), (2, Duration::ZERO));
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_run_serves_the_previous_runs_answer() {
        let dir = tempfile::tempdir().expect("temp dir");
        let key = "http://127.0.0.1:5055/";
        let first = FallbackCache::persistent(dir.path())
            .expect("cache dir")
            .with_wall_clock(earlier);
        first
            .store(key, serde_json::json!({"data": [1, 2, 3]}))
            .expect("written");

        let second: FallbackCache<serde_json::Value> = FallbackCache::persistent(dir.path())
            .expect("cache dir")
            .with_wall_clock(ninety_seconds_later);
        let stale = second.stale(key).expect("readable").expect("found");
        assert_eq!(stale.value, serde_json::json!({"data": [1, 2, 3]}));
        assert_eq!(stale.age, Duration::from_secs(90));
        advance(Duration::from_secs(5)).await;
        let again = second.stale(key).expect("readable").expect("found");
        assert_eq!(again.age, Duration::from_secs(95), "ages on from the load");
    }

    #[test]
    fn the_directory_holds_one_json_file_per_key_and_no_leftovers() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cache = FallbackCache::persistent(dir.path()).expect("cache dir");
        cache.store("a", 1).expect("written");
        cache.store("a", 2).expect("written");
        cache.store("b/../c", 3).expect("written");
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .expect("listing")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .collect();
        names.sort();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names.iter().all(|n| n.ends_with(".json")));
        assert!(names.iter().any(|n| n.starts_with("b_.._c-")));
        let path = cache.path_of("a").expect("persistent");
        let json: serde_json::Value =
            serde_json::from_slice(&fs::read(path).expect("file")).expect("json");
        assert_eq!(
            (json["key"].as_str(), json["value"].as_i64()),
            (Some("a"), Some(2))
        );
    }

    #[test]
    fn a_corrupt_file_is_reported_with_its_path() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cache: FallbackCache<u32> = FallbackCache::persistent(dir.path()).expect("cache dir");
        let path = cache.path_of("k").expect("persistent");
        fs::write(&path, b"{not json").expect("written");
        let err = cache.stale("k").expect_err("corrupt");
        assert!(matches!(err, FallbackError::Corrupt { .. }));
        assert!(err.to_string().contains(&path.display().to_string()));
        assert_eq!(cache.serve("k", Err("down")), Err("down"));
    }

    #[test]
    fn a_file_for_another_key_is_not_served() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cache: FallbackCache<u32> = FallbackCache::persistent(dir.path()).expect("cache dir");
        let path = cache.path_of("k").expect("persistent");
        fs::write(&path, br#"{"key":"other","stored_at_unix_ms":0,"value":1}"#).expect("written");
        assert_eq!(cache.stale("k").expect("readable"), None);
    }

    #[test]
    fn file_names_are_stable_and_distinct() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(file_name("a/b"), file_name("a_b"));
        assert!(file_name(&"x".repeat(500)).len() < 100);
    }
}
