//! The verifier's snapshot in SQLite: auctions, every decision with the
//! exact outcome bytes to publish, and how far the log has been applied and
//! the outcomes published.
//!
//! Blocking code: call it from a blocking thread, never across an `.await`.
//! Each batch of the log is written in one transaction, so the snapshot is
//! always the state after some whole batch.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

use crate::core::{Ledger, Life, Verdict};
use crate::wire::{CommandResult, OpenEvent, OutcomeEvent, TryAt};

/// File name of the snapshot inside the data directory.
pub const FILE_NAME: &str = "allot.sqlite";

/// A snapshot that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot create data directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("snapshot {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("snapshot {path} holds a decision that cannot be read ({what})")]
    Corrupt { path: PathBuf, what: String },
    #[error("no snapshot at {path}, or one in another layout")]
    Missing { path: PathBuf },
    #[error("snapshot {path} is damaged ({source})")]
    Damaged {
        path: PathBuf,
        source: rusqlite::Error,
    },
}

impl SnapshotError {
    /// A SQLite error, told apart: a damaged file needs the operator.
    fn sqlite(path: &Path, source: rusqlite::Error) -> SnapshotError {
        use rusqlite::ErrorCode::{DatabaseCorrupt, NotADatabase};
        let path = path.to_path_buf();
        match source.sqlite_error_code() {
            Some(NotADatabase | DatabaseCorrupt) => SnapshotError::Damaged { path, source },
            _ => SnapshotError::Sqlite { path, source },
        }
    }
}

/// One decision as stored: the outcome and its exact published bytes.
#[derive(Clone, Debug)]
pub struct StoredOutcome {
    /// The decision.
    pub outcome: OutcomeEvent,
    /// Its JSON exactly as published, so a republish is byte-identical.
    pub payload: bytes::Bytes,
}

/// Everything one batch of the log changed.
#[derive(Debug, Default)]
pub struct Batch {
    /// Auctions opened, with the log sequence of their `open` event.
    pub opens: Vec<(u64, OpenEvent)>,
    /// Tries decided (by this batch's events; in a ranked auction, the
    /// try may be older).
    pub decisions: Vec<StoredOutcome>,
    /// Auctions whose state besides decisions changed, with that state.
    pub lives: Vec<(String, Life)>,
    /// What each withdraw and raise did, by its log sequence.
    pub commands: Vec<(u64, String, CommandResult)>,
    /// Tries in the log per auction, for those this batch added to.
    pub tries: Vec<(String, u64)>,
    /// Last log sequence this batch covers.
    pub last_seq: u64,
}

/// Where the snapshot stands in the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Position {
    /// Every log event up to here is applied.
    pub last_seq: u64,
    /// Every outcome of a try up to here is published.
    pub published_through: u64,
    /// The outcome stream's last sequence when that was recorded: outcomes
    /// after it may be ones this snapshot decided but did not record as
    /// published.
    pub outcomes_seq: u64,
}

/// An open snapshot database.
pub struct Snapshot {
    /// The one connection; never shared across threads at once.
    conn: Connection,
    /// Kept for error messages.
    path: PathBuf,
}

/// Durability of SQLite commits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Sync {
    /// WAL with `synchronous=NORMAL`: survives a process crash; a power
    /// loss may lose the last commits, which the verifier then redoes from
    /// the log.
    #[default]
    Normal,
    /// `synchronous=FULL`: every commit is on disk before it returns.
    Full,
}

/// Moves a damaged snapshot's files out of the way (renamed with a
/// `.damaged-<unix seconds>` suffix, in the same directory), so that a new
/// one can be built. Returns the new name of the main file.
pub fn set_aside(dir: &Path) -> std::io::Result<PathBuf> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut main = dir.join(FILE_NAME);
    for suffix in ["", "-wal", "-shm"] {
        let from = dir.join(format!("{FILE_NAME}{suffix}"));
        let to = dir.join(format!("{FILE_NAME}{suffix}.damaged-{stamp}"));
        match std::fs::rename(&from, &to) {
            Ok(()) if suffix.is_empty() => main = to,
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(main)
}

/// The snapshot's table layout; a file with another is rebuilt from the
/// streams (4: decisions keyed by try sequence and index, for entries of
/// several tries; 5: tables keyed by text `WITHOUT ROWID`, and each
/// decision's place in its batch).
const SCHEMA_VERSION: i64 = 5;

impl Snapshot {
    /// Opens (or creates) the snapshot in `dir`.
    pub fn open(dir: &Path, sync: Sync) -> Result<Snapshot, SnapshotError> {
        std::fs::create_dir_all(dir).map_err(|source| SnapshotError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        let sql = |source| SnapshotError::sqlite(&path, source);
        let conn = Connection::open(&path).map_err(sql)?;
        let synchronous = match sync {
            Sync::Normal => "NORMAL",
            Sync::Full => "FULL",
        };
        // A page cache of 1 MiB rather than SQLite's 2 MB: a process keeps
        // one snapshot per partition it decides, and a batch only appends
        // (decisions are keyed by log sequence) and rewrites a few rows.
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = {synchronous};
             PRAGMA cache_size = -1024;"
        ))
        .map_err(sql)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(sql)?;
        if version != SCHEMA_VERSION {
            // An older layout: start empty, and the verifier rebuilds the
            // snapshot from the streams (as after a lost snapshot).
            conn.execute_batch(
                "DROP TABLE IF EXISTS meta;
                 DROP TABLE IF EXISTS auctions;
                 DROP TABLE IF EXISTS decisions;
                 DROP TABLE IF EXISTS lives;
                 DROP TABLE IF EXISTS commands;
                 DROP TABLE IF EXISTS tries;",
            )
            .map_err(sql)?;
        }
        // Decisions are keyed by their try's log sequence, so each batch
        // appends to the end of the table: a few pages written per batch,
        // where a key of (auction, bid) would rewrite a page per decision.
        // A bid is decided once by construction (the core), so nothing
        // needs looking up by bid here. `decided_seq` is the last log
        // sequence of the batch that decided it: in a ranked auction a
        // close decides tries far older than itself, and whether an
        // outcome is surely published goes by when it was decided;
        // `decided_index` is its place in that batch's decisions, the
        // order they are published in. Tables keyed by something other
        // than an integer are `WITHOUT ROWID`: one b-tree each, where a
        // rowid table keeps a second one for its key (the snapshot commit
        // was a fifth of serve's CPU in the pipeline, one row a decision).
        conn.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS meta (
                 key TEXT PRIMARY KEY,
                 value TEXT NOT NULL
             ) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS auctions (
                 auction_id TEXT PRIMARY KEY,
                 open_seq INTEGER NOT NULL,
                 event TEXT NOT NULL
             ) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS decisions (
                 try_seq INTEGER NOT NULL,
                 try_index INTEGER NOT NULL,
                 auction_id TEXT NOT NULL,
                 bid_id TEXT NOT NULL,
                 decided_seq INTEGER NOT NULL,
                 decided_index INTEGER NOT NULL,
                 payload BLOB NOT NULL,
                 PRIMARY KEY (try_seq, try_index)
             ) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS lives (
                 auction_id TEXT PRIMARY KEY,
                 life TEXT NOT NULL
             ) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS tries (
                 auction_id TEXT PRIMARY KEY,
                 count INTEGER NOT NULL
             ) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS commands (
                 seq INTEGER PRIMARY KEY,
                 auction_id TEXT NOT NULL,
                 result TEXT NOT NULL
             );
             PRAGMA user_version = {SCHEMA_VERSION};"
        ))
        .map_err(sql)?;
        Ok(Snapshot { conn, path })
    }

    fn sql(&self, source: rusqlite::Error) -> SnapshotError {
        SnapshotError::sqlite(&self.path, source)
    }

    fn meta(&self, key: &str) -> Result<Option<String>, SnapshotError> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(|e| self.sql(e))
    }

    fn meta_u64(&self, key: &str) -> Result<u64, SnapshotError> {
        Ok(self.meta(key)?.and_then(|v| v.parse().ok()).unwrap_or(0))
    }

    /// Which log this snapshot was built from (the stream's creation time),
    /// so that a snapshot is never applied to a different, re-created stream.
    pub fn log_identity(&self) -> Result<Option<String>, SnapshotError> {
        self.meta("log_identity")
    }

    /// Empties the snapshot and ties it to the log `identity`.
    pub fn reset(&mut self, identity: &str) -> Result<(), SnapshotError> {
        let result = (|| {
            let tx = self.conn.transaction()?;
            tx.execute_batch(
                "DELETE FROM meta; DELETE FROM auctions; DELETE FROM decisions;
                 DELETE FROM lives; DELETE FROM commands; DELETE FROM tries;",
            )?;
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('log_identity', ?1)",
                [identity],
            )?;
            tx.commit()
        })();
        result.map_err(|e| self.sql(e))
    }

    pub fn position(&self) -> Result<Position, SnapshotError> {
        Ok(Position {
            last_seq: self.meta_u64("last_seq")?,
            published_through: self.meta_u64("published_through")?,
            outcomes_seq: self.meta_u64("outcomes_seq")?,
        })
    }

    /// Rebuilds the ledger, applying opens and decisions in log order so
    /// that the state equals the one the verifier had.
    pub fn load(&self) -> Result<Ledger, SnapshotError> {
        let mut opens: Vec<(u64, OpenEvent)> = Vec::new();
        for (seq, json) in
            self.pairs::<u64, String>("SELECT open_seq, event FROM auctions ORDER BY open_seq")?
        {
            let event = serde_json::from_str(&json).map_err(|e| self.corrupt(e))?;
            opens.push((seq, event));
        }
        let mut ledger = Ledger::new();
        let mut opens = opens.into_iter().peekable();
        let mut stmt = self
            .conn
            .prepare(
                "SELECT try_seq, try_index, payload FROM decisions ORDER BY try_seq, try_index",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| {
                let at = TryAt::new(r.get(0)?, r.get(1)?);
                Ok((at, r.get::<_, Vec<u8>>(2)?))
            })
            .map_err(|e| self.sql(e))?;
        for row in rows {
            let (at, payload) = row.map_err(|e| self.sql(e))?;
            let seq = at.seq;
            while let Some((_, open)) = opens.next_if(|(open_seq, _)| *open_seq < seq) {
                ledger.open(&open);
            }
            let o: OutcomeEvent = serde_json::from_slice(&payload).map_err(|e| self.corrupt(e))?;
            ledger.restore(&o.auction_id, &o.bid_id, &o.bidder_id, verdict(&o)?, at);
        }
        for (_, open) in opens {
            ledger.open(&open);
        }
        for (auction_id, json) in
            self.pairs::<String, String>("SELECT auction_id, life FROM lives")?
        {
            let life: Life = serde_json::from_str(&json).map_err(|e| self.corrupt(e))?;
            ledger.restore_life(&auction_id, life);
        }
        for (auction_id, count) in
            self.pairs::<String, u64>("SELECT auction_id, count FROM tries")?
        {
            ledger.restore_tries(&auction_id, count);
        }
        Ok(ledger)
    }

    /// Every row of a query of two columns.
    fn pairs<A: rusqlite::types::FromSql, B: rusqlite::types::FromSql>(
        &self,
        sql: &str,
    ) -> Result<Vec<(A, B)>, SnapshotError> {
        let mut stmt = self.conn.prepare(sql).map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, A>(0)?, r.get::<_, B>(1)?)))
            .map_err(|e| self.sql(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.sql(e))
    }

    /// What the withdraw or raise at log sequence `seq` did, once decided.
    pub fn command(&self, seq: u64) -> Result<Option<CommandResult>, SnapshotError> {
        let json: Option<String> = self
            .conn
            .query_row("SELECT result FROM commands WHERE seq = ?1", [seq], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.sql(e))?;
        json.map(|j| serde_json::from_str(&j).map_err(|e| self.corrupt(e)))
            .transpose()
    }

    fn corrupt(&self, e: impl std::fmt::Display) -> SnapshotError {
        SnapshotError::Corrupt {
            path: self.path.clone(),
            what: e.to_string(),
        }
    }

    /// Writes one batch in one transaction.
    pub fn commit(&mut self, batch: &Batch) -> Result<(), SnapshotError> {
        if crate::faults::fail_point("commit") {
            // As SQLite reports a full disk.
            return Err(self.sql(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
                Some("injected by ALLOT_FAIL_AT".into()),
            )));
        }
        let result = (|| {
            let tx = self.conn.transaction()?;
            {
                let mut open = tx.prepare_cached(
                    "INSERT OR IGNORE INTO auctions (auction_id, open_seq, event) VALUES (?1, ?2, ?3)",
                )?;
                for (seq, event) in &batch.opens {
                    let json = serde_json::to_string(event).expect("open events serialize");
                    open.execute(params![event.auction_id, seq, json])?;
                }
                let mut decide = tx.prepare_cached(
                    "INSERT INTO decisions (auction_id, bid_id, try_seq, try_index, decided_seq, decided_index, payload) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?;
                for (index, d) in batch.decisions.iter().enumerate() {
                    let o = &d.outcome;
                    decide.execute(params![
                        o.auction_id,
                        o.bid_id,
                        o.try_seq,
                        o.try_index,
                        batch.last_seq,
                        index,
                        d.payload.as_ref()
                    ])?;
                }
                let mut life = tx.prepare_cached(
                    "INSERT INTO lives (auction_id, life) VALUES (?1, ?2)
                     ON CONFLICT (auction_id) DO UPDATE SET life = excluded.life",
                )?;
                for (auction_id, l) in &batch.lives {
                    let json = serde_json::to_string(l).expect("lives serialize");
                    life.execute(params![auction_id, json])?;
                }
                let mut tries = tx.prepare_cached(
                    "INSERT INTO tries (auction_id, count) VALUES (?1, ?2)
                     ON CONFLICT (auction_id) DO UPDATE SET count = excluded.count",
                )?;
                for (auction_id, count) in &batch.tries {
                    tries.execute(params![auction_id, count])?;
                }
                let mut command = tx.prepare_cached(
                    "INSERT OR REPLACE INTO commands (seq, auction_id, result) VALUES (?1, ?2, ?3)",
                )?;
                for (seq, auction_id, result) in &batch.commands {
                    let json = serde_json::to_string(result).expect("results serialize");
                    command.execute(params![seq, auction_id, json])?;
                }
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('last_seq', ?1)",
                )?
                .execute([batch.last_seq.to_string()])?;
            }
            tx.commit()
        })();
        result.map_err(|e| self.sql(e))
    }

    /// Records that every outcome of a try up to `seq` is published, and
    /// the outcome stream's last sequence at that point.
    pub fn mark_published(&mut self, seq: u64, outcomes_seq: u64) -> Result<(), SnapshotError> {
        let result = (|| {
            let tx = self.conn.transaction()?;
            let mut set =
                tx.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?;
            set.execute(["published_through", &seq.to_string()])?;
            set.execute(["outcomes_seq", &outcomes_seq.to_string()])?;
            drop(set);
            tx.commit()
        })();
        result.map_err(|e| self.sql(e))
    }

    /// Opens an existing snapshot without changing it (for `allot audit`),
    /// while a verifier may be writing it.
    pub fn open_read_only(dir: &Path) -> Result<Snapshot, SnapshotError> {
        use rusqlite::OpenFlags;
        let path = dir.join(FILE_NAME);
        let missing = || SnapshotError::Missing { path: path.clone() };
        if !path.is_file() {
            return Err(missing());
        }
        let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| SnapshotError::sqlite(&path, e))?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| SnapshotError::sqlite(&path, e))?;
        if version != SCHEMA_VERSION {
            return Err(missing());
        }
        Ok(Snapshot { conn, path })
    }

    /// The outcome of the try at `at`, once decided.
    pub fn outcome(&self, at: TryAt) -> Result<Option<OutcomeEvent>, SnapshotError> {
        let payload: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT payload FROM decisions WHERE try_seq = ?1 AND try_index = ?2",
                params![at.seq, at.index],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.sql(e))?;
        payload
            .map(|p| serde_json::from_slice(&p).map_err(|e| self.corrupt(e)))
            .transpose()
    }

    /// Every decision, or one auction's, in log order.
    pub fn decisions(&self, auction_id: Option<&str>) -> Result<Vec<OutcomeEvent>, SnapshotError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT payload FROM decisions WHERE ?1 IS NULL OR auction_id = ?1 ORDER BY try_seq, try_index",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([auction_id], |r| r.get::<_, Vec<u8>>(0))
            .map_err(|e| self.sql(e))?;
        let mut out = Vec::new();
        for row in rows {
            let payload = row.map_err(|e| self.sql(e))?;
            out.push(serde_json::from_slice(&payload).map_err(|e| self.corrupt(e))?);
        }
        Ok(out)
    }

    /// Decisions whose publication is not confirmed, in the order they
    /// were decided.
    pub fn unpublished(&self) -> Result<Vec<StoredOutcome>, SnapshotError> {
        let through = self.meta_u64("published_through")?;
        let mut stmt = self
            .conn
            .prepare(
                "SELECT payload FROM decisions WHERE decided_seq > ?1 ORDER BY decided_seq, decided_index",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([through], |r| r.get::<_, Vec<u8>>(0))
            .map_err(|e| self.sql(e))?;
        let mut out = Vec::new();
        for row in rows {
            let payload = row.map_err(|e| self.sql(e))?;
            let outcome = serde_json::from_slice(&payload).map_err(|e| self.corrupt(e))?;
            out.push(StoredOutcome {
                outcome,
                payload: payload.into(),
            });
        }
        Ok(out)
    }
}

/// The verdict an outcome event records.
fn verdict(o: &OutcomeEvent) -> Result<Verdict, SnapshotError> {
    Verdict::of(o).ok_or_else(|| SnapshotError::Corrupt {
        path: PathBuf::new(),
        what: format!("confirmed outcome for bid {:?} has no rank", o.bid_id),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_in_an_older_layout_is_emptied_for_a_rebuild() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join(FILE_NAME)).unwrap();
            conn.execute_batch(
                "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                 INSERT INTO meta VALUES ('log_identity', 'ALLOT_TRIES@then'), ('last_seq', '42');
                 CREATE TABLE decisions (
                     auction_id TEXT NOT NULL, bid_id TEXT NOT NULL,
                     try_seq INTEGER NOT NULL, payload BLOB NOT NULL,
                     PRIMARY KEY (auction_id, bid_id)) WITHOUT ROWID;",
            )
            .unwrap();
        }
        let snapshot = Snapshot::open(dir.path(), Sync::Normal).unwrap();
        assert_eq!(snapshot.log_identity().unwrap(), None);
        assert_eq!(snapshot.position().unwrap().last_seq, 0);
        // And the new layout stays: opening again keeps what is there.
        let mut snapshot = snapshot;
        snapshot.reset("ALLOT_TRIES@now").unwrap();
        drop(snapshot);
        let snapshot = Snapshot::open(dir.path(), Sync::Normal).unwrap();
        assert_eq!(
            snapshot.log_identity().unwrap().as_deref(),
            Some("ALLOT_TRIES@now")
        );
    }
}
