//! Storage-engine benchmark for the Tidings channel log: SQLite (rusqlite, bundled, WAL,
//! `synchronous=FULL`, the schema of `src/log/embedded/schema.rs`) against redb (`Durability::Immediate`).
//! Every commit is durable (fsync'd) in both engines. See `docs/storage.md` for the figures.
//!
//! Usage: `tidings-storage-bench [--runs N] [--secs S] [--fill N] [--range N] [--cold]
//!         [--only append,dedup,range,fill]`, or `tidings-storage-bench io ENGINE COMMITS SIZE`.
//! Data goes to a fresh directory under `/tmp`, removed at the end.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

const PAYLOAD: usize = 100;
const DEDUP_WINDOW_MS: u64 = 24 * 3600 * 1000;

// ---------------------------------------------------------------------------------------------
// Data model shared by both engines.

/// One message to append. `data` is a 100-byte JSON string (what the server stores as text).
struct NewMsg {
    id: Option<String>,
    data: String,
}

/// A message read back, decoded into owned values as the server would.
#[allow(dead_code)]
struct Stored {
    serial: u64,
    id: Option<String>,
    data: String,
    ts: u64,
}

fn payload(seed: u64) -> String {
    // A JSON string literal of exactly PAYLOAD bytes, varying so compression-free engines see
    // realistic (non-constant) bytes.
    let mut s = String::with_capacity(PAYLOAD);
    s.push('"');
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while s.len() < PAYLOAD - 1 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push((b'a' + (x % 26) as u8) as char);
    }
    s.push('"');
    s
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    /// A 32-hex-digit id (like a UUID without dashes), random so index inserts land anywhere.
    fn id(&mut self) -> String {
        format!("{:016x}{:016x}", self.next(), self.next())
    }
}

fn batch(n: usize, ids: Option<&mut Rng>, seed: u64) -> Vec<NewMsg> {
    let mut ids = ids;
    (0..n)
        .map(|i| NewMsg {
            id: ids.as_deref_mut().map(Rng::id),
            data: payload(seed + i as u64),
        })
        .collect()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Sqlite,
    /// SQLite with the dedup index made covering: `(channel_id, msg_id, ts)`.
    SqliteCovering,
    Redb,
    /// redb with `set_quick_repair(true)` on every commit (faster crash repair, slower commits).
    RedbQuick,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Sqlite => "sqlite",
            Kind::SqliteCovering => "sqlite+covering_idx",
            Kind::Redb => "redb",
            Kind::RedbQuick => "redb+quick_repair",
        }
    }
    fn parse(s: &str) -> Kind {
        match s {
            "sqlite" => Kind::Sqlite,
            "sqlite+covering_idx" => Kind::SqliteCovering,
            "redb" => Kind::Redb,
            "redb+quick_repair" => Kind::RedbQuick,
            _ => panic!("unknown engine {s}"),
        }
    }
}

/// A writer over one engine. Channel heads are kept in memory, as the embedded log (`src/log/embedded/`) does, and the
/// channel's head row is updated in the same transaction as the messages.
trait Log {
    /// Append `msgs` to `channel` in one durable transaction. With `dedup`, each message's id is
    /// looked up first (within the dedup window) and duplicates are skipped. Returns appended count.
    fn append(&mut self, channel: u64, msgs: &[NewMsg], dedup: bool) -> usize;
}

// ---------------------------------------------------------------------------------------------
// SQLite, as in src/log/embedded/schema.rs.

struct Sqlite {
    conn: Connection,
    heads: HashMap<u64, u64>,
}

const SQLITE_FILE: &str = "log.sqlite";

/// The dedup index of the embedded log, and the covering variant.
const INDEX_AS_IS: &str = "CREATE INDEX IF NOT EXISTS messages_by_id ON messages (channel_id, msg_id)
             WHERE msg_id IS NOT NULL;";
const INDEX_COVERING: &str = "CREATE INDEX IF NOT EXISTS messages_by_id ON messages (channel_id, msg_id, ts)
             WHERE msg_id IS NOT NULL;";

fn sqlite_init(conn: &Connection, covering: bool) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
         CREATE TABLE IF NOT EXISTS channels (
             id INTEGER PRIMARY KEY,
             name TEXT NOT NULL UNIQUE,
             epoch TEXT NOT NULL,
             head INTEGER NOT NULL,
             trimmed INTEGER NOT NULL DEFAULT 0);
         CREATE TABLE IF NOT EXISTS messages (
             channel_id INTEGER NOT NULL,
             serial INTEGER NOT NULL,
             msg_id TEXT,
             name TEXT,
             data TEXT,
             headers TEXT,
             ts INTEGER NOT NULL,
             PRIMARY KEY (channel_id, serial)) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS checkpoints (source TEXT PRIMARY KEY, position TEXT NOT NULL);",
    )?;
    conn.execute_batch(if covering { INDEX_COVERING } else { INDEX_AS_IS })?;
    conn.execute(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('epoch', '0123456789abcdef')",
        [],
    )?;
    Ok(())
}

impl Sqlite {
    fn open(dir: &Path, covering: bool) -> Sqlite {
        let conn = Connection::open(dir.join(SQLITE_FILE)).unwrap();
        sqlite_init(&conn, covering).unwrap();
        let heads = sqlite_heads(&conn);
        Sqlite { conn, heads }
    }
}

fn sqlite_heads(conn: &Connection) -> HashMap<u64, u64> {
    let mut stmt = conn.prepare("SELECT id, head FROM channels").unwrap();
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)))
        .unwrap();
    rows.map(Result::unwrap).collect()
}

impl Log for Sqlite {
    fn append(&mut self, channel: u64, msgs: &[NewMsg], dedup: bool) -> usize {
        let ts = now_ms();
        let tx = self.conn.transaction().unwrap();
        let head = match self.heads.get(&channel) {
            Some(h) => *h,
            None => {
                tx.execute(
                    "INSERT INTO channels (id, name, epoch, head) VALUES (?1, ?2, 'e', 0)",
                    params![channel as i64, format!("bench:ch{channel}")],
                )
                .unwrap();
                0
            }
        };
        let mut serial = head;
        let mut appended = 0;
        {
            let mut find = tx
                .prepare_cached(
                    "SELECT serial FROM messages
                     WHERE channel_id = ?1 AND msg_id = ?2 AND ts >= ?3 LIMIT 1",
                )
                .unwrap();
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO messages (channel_id, serial, msg_id, name, data, headers, ts)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .unwrap();
            for m in msgs {
                if dedup {
                    if let Some(id) = &m.id {
                        let found: Option<i64> = find
                            .query_row(
                                params![channel as i64, id, ts.saturating_sub(DEDUP_WINDOW_MS) as i64],
                                |r| r.get(0),
                            )
                            .optional()
                            .unwrap();
                        if found.is_some() {
                            continue;
                        }
                    }
                }
                serial += 1;
                insert
                    .execute(params![
                        channel as i64,
                        serial as i64,
                        m.id,
                        None::<String>,
                        m.data,
                        None::<String>,
                        ts as i64
                    ])
                    .unwrap();
                appended += 1;
            }
        }
        if serial != head {
            tx.prepare_cached("UPDATE channels SET head = ?1 WHERE id = ?2")
                .unwrap()
                .execute(params![serial as i64, channel as i64])
                .unwrap();
        }
        tx.commit().unwrap();
        self.heads.insert(channel, serial);
        appended
    }
}

/// Read `total` messages of `channel` in pages of `page` through a fresh read-only connection
/// (as the server's reader pool opens them); every page is its own statement/read transaction.
fn sqlite_read(dir: &Path, channel: u64, total: u64, page: u64) -> u64 {
    let conn = Connection::open_with_flags(
        dir.join(SQLITE_FILE),
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    let mut after = 0u64;
    let mut read = 0u64;
    while read < total {
        let mut stmt = conn
            .prepare_cached(
                "SELECT serial, msg_id, name, data, headers, ts FROM messages
                 WHERE channel_id = ?1 AND serial > ?2 ORDER BY serial LIMIT ?3",
            )
            .unwrap();
        let rows = stmt
            .query_map(params![channel as i64, after as i64, page as i64], |r| {
                let _name: Option<String> = r.get(2)?;
                let _headers: Option<String> = r.get(4)?;
                Ok(Stored {
                    serial: r.get::<_, i64>(0)? as u64,
                    id: r.get(1)?,
                    data: r.get(3)?,
                    ts: r.get::<_, i64>(5)? as u64,
                })
            })
            .unwrap();
        let mut out = Vec::with_capacity(page as usize);
        for row in rows {
            out.push(row.unwrap());
        }
        if out.is_empty() {
            break;
        }
        after = out.last().unwrap().serial;
        read += out.len() as u64;
        std::hint::black_box(&out);
    }
    read
}

// ---------------------------------------------------------------------------------------------
// redb: messages keyed by (channel_id, serial) -> encoded record; dedup keyed by
// (channel_id, msg_id) -> (serial, ts); channels: channel_id -> head.

const MESSAGES: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("messages");
const DEDUP: TableDefinition<(u64, &str), (u64, u64)> = TableDefinition::new("dedup");
const CHANNELS: TableDefinition<u64, u64> = TableDefinition::new("channels");
const REDB_FILE: &str = "log.redb";

/// Record layout: ts (u64 LE) | id length (u8, 0 = none) | id | data.
fn encode(buf: &mut Vec<u8>, ts: u64, id: Option<&str>, data: &str) {
    buf.clear();
    buf.extend_from_slice(&ts.to_le_bytes());
    let id = id.unwrap_or("");
    buf.push(id.len() as u8);
    buf.extend_from_slice(id.as_bytes());
    buf.extend_from_slice(data.as_bytes());
}

fn decode(serial: u64, b: &[u8]) -> Stored {
    let ts = u64::from_le_bytes(b[..8].try_into().unwrap());
    let n = b[8] as usize;
    let id = (n > 0).then(|| std::str::from_utf8(&b[9..9 + n]).unwrap().to_owned());
    let data = std::str::from_utf8(&b[9 + n..]).unwrap().to_owned();
    Stored {
        serial,
        id,
        data,
        ts,
    }
}

struct Redb {
    db: redb::Database,
    heads: HashMap<u64, u64>,
    quick_repair: bool,
    buf: Vec<u8>,
}

impl Redb {
    fn open(dir: &Path, quick_repair: bool) -> Redb {
        let db = redb::Database::create(dir.join(REDB_FILE)).unwrap();
        let heads = redb_heads(&db);
        Redb {
            db,
            heads,
            quick_repair,
            buf: Vec::with_capacity(256),
        }
    }
}

fn redb_heads(db: &redb::Database) -> HashMap<u64, u64> {
    let rtx = db.begin_read().unwrap();
    match rtx.open_table(CHANNELS) {
        Ok(t) => t
            .iter()
            .unwrap()
            .map(|e| {
                let (k, v) = e.unwrap();
                (k.value(), v.value())
            })
            .collect(),
        Err(redb::TableError::TableDoesNotExist(_)) => HashMap::new(),
        Err(e) => panic!("{e}"),
    }
}

impl Log for Redb {
    fn append(&mut self, channel: u64, msgs: &[NewMsg], dedup: bool) -> usize {
        let ts = now_ms();
        let mut tx = self.db.begin_write().unwrap();
        tx.set_durability(redb::Durability::Immediate).unwrap();
        if self.quick_repair {
            tx.set_quick_repair(true);
        }
        let head = self.heads.get(&channel).copied().unwrap_or(0);
        let mut serial = head;
        let mut appended = 0;
        {
            let mut messages = tx.open_table(MESSAGES).unwrap();
            let mut ids = tx.open_table(DEDUP).unwrap();
            for m in msgs {
                if let Some(id) = &m.id {
                    if dedup {
                        if let Some(found) = ids.get((channel, id.as_str())).unwrap() {
                            let (_serial, seen) = found.value();
                            if seen >= ts.saturating_sub(DEDUP_WINDOW_MS) {
                                continue;
                            }
                        }
                    }
                }
                serial += 1;
                encode(&mut self.buf, ts, m.id.as_deref(), &m.data);
                messages.insert((channel, serial), self.buf.as_slice()).unwrap();
                if let Some(id) = &m.id {
                    ids.insert((channel, id.as_str()), (serial, ts)).unwrap();
                }
                appended += 1;
            }
            let mut channels = tx.open_table(CHANNELS).unwrap();
            if serial != head || !self.heads.contains_key(&channel) {
                channels.insert(channel, serial).unwrap();
            }
        }
        tx.commit().unwrap();
        self.heads.insert(channel, serial);
        appended
    }
}

/// Read `total` messages of `channel` in pages of `page` from a freshly opened database; every
/// page is its own read transaction.
fn redb_read(dir: &Path, channel: u64, total: u64, page: u64) -> u64 {
    let db = redb::Database::open(dir.join(REDB_FILE)).unwrap();
    let mut after = 0u64;
    let mut read = 0u64;
    while read < total {
        let rtx = db.begin_read().unwrap();
        let table = rtx.open_table(MESSAGES).unwrap();
        let mut out = Vec::with_capacity(page as usize);
        for e in table.range((channel, after + 1)..=(channel, u64::MAX)).unwrap() {
            let (k, v) = e.unwrap();
            out.push(decode(k.value().1, v.value()));
            if out.len() as u64 == page {
                break;
            }
        }
        if out.is_empty() {
            break;
        }
        after = out.last().unwrap().serial;
        read += out.len() as u64;
        std::hint::black_box(&out);
    }
    read
}

// ---------------------------------------------------------------------------------------------
// Harness.

fn open_log(kind: Kind, dir: &Path) -> Box<dyn Log> {
    match kind {
        Kind::Sqlite => Box::new(Sqlite::open(dir, false)),
        Kind::SqliteCovering => Box::new(Sqlite::open(dir, true)),
        Kind::Redb => Box::new(Redb::open(dir, false)),
        Kind::RedbQuick => Box::new(Redb::open(dir, true)),
    }
}

/// Open as the server would and learn every channel head (plus, for SQLite, the max(ts) scan
/// that `EmbeddedLog::open` runs today, timed separately).
fn reopen(kind: Kind, dir: &Path) -> (Duration, Option<Duration>, usize) {
    let start = Instant::now();
    match kind {
        Kind::Sqlite | Kind::SqliteCovering => {
            let conn = Connection::open(dir.join(SQLITE_FILE)).unwrap();
            sqlite_init(&conn, kind == Kind::SqliteCovering).unwrap();
            let heads = sqlite_heads(&conn);
            let t = start.elapsed();
            let s2 = Instant::now();
            let _max: i64 = conn
                .query_row("SELECT COALESCE(MAX(ts), 0) FROM messages", [], |r| r.get(0))
                .unwrap();
            (t, Some(s2.elapsed()), heads.len())
        }
        Kind::Redb | Kind::RedbQuick => {
            let db = redb::Database::create(dir.join(REDB_FILE)).unwrap();
            let heads = redb_heads(&db);
            (start.elapsed(), None, heads.len())
        }
    }
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

fn fresh_dir(root: &Path, name: &str) -> PathBuf {
    let d = root.join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

struct Stats {
    med: f64,
    min: f64,
    max: f64,
}

fn stats(v: &[f64]) -> Stats {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Stats {
        med: s[s.len() / 2],
        min: s[0],
        max: s[s.len() - 1],
    }
}

fn fmt_num(x: f64) -> String {
    if x >= 100.0 {
        let n = x.round() as u64;
        let s = n.to_string();
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else {
        format!("{x:.2}")
    }
}

struct Table {
    rows: Vec<(String, String, String, Stats)>,
}

impl Table {
    fn add(&mut self, test: &str, engine: Kind, unit: &str, v: &[f64]) {
        let s = stats(v);
        self.rows
            .push((test.to_owned(), engine.name().to_owned(), unit.to_owned(), s));
    }
    fn print(&self) {
        let mut out = String::new();
        writeln!(
            out,
            "| test | engine | median | min | max | unit |\n|---|---|---:|---:|---:|---|"
        )
        .unwrap();
        for (t, e, u, s) in &self.rows {
            writeln!(
                out,
                "| {t} | {e} | {} | {} | {} | {u} |",
                fmt_num(s.med),
                fmt_num(s.min),
                fmt_num(s.max)
            )
            .unwrap();
        }
        print!("{out}");
    }
}

/// Append batches of `size` messages to channel 1 for `secs`; returns (messages/s, commits/s).
fn run_append(kind: Kind, dir: &Path, size: usize, secs: f64, ids: bool) -> (f64, f64) {
    let mut log = open_log(kind, dir);
    let mut rng = Rng(0x5eed ^ size as u64);
    // Pre-build a few batches so message construction is outside the timed loop.
    let pool: Vec<Vec<NewMsg>> = (0..8).map(|i| batch(size, None, i * size as u64)).collect();
    let mut msgs = 0usize;
    let mut commits = 0usize;
    let start = Instant::now();
    let limit = Duration::from_secs_f64(secs);
    let mut i = 0;
    while start.elapsed() < limit {
        if ids {
            // Fresh unique ids per batch (generation is cheap next to the commit).
            let b: Vec<NewMsg> = pool[i % pool.len()]
                .iter()
                .map(|m| NewMsg {
                    id: Some(rng.id()),
                    data: m.data.clone(),
                })
                .collect();
            msgs += log.append(1, &b, true);
        } else {
            msgs += log.append(1, &pool[i % pool.len()], false);
        }
        commits += 1;
        i += 1;
    }
    let el = start.elapsed().as_secs_f64();
    (msgs as f64 / el, commits as f64 / el)
}

/// Fill `total` messages in commits of 1024, cycling over 10 channels.
fn fill(kind: Kind, dir: &Path, total: u64, ids: bool) -> Duration {
    let mut log = open_log(kind, dir);
    let mut rng = Rng(0xf111);
    let start = Instant::now();
    let mut done = 0u64;
    let mut c = 0u64;
    while done < total {
        let n = 1024.min(total - done) as usize;
        let b = batch(n, ids.then_some(&mut rng), done);
        done += log.append(1 + c % 10, &b, false) as u64;
        c += 1;
    }
    drop(log);
    start.elapsed()
}

/// User + system CPU time of the calling thread, from /proc (10 ms resolution).
fn thread_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `rest` starts at field 3.
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

fn proc_io() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/self/io").unwrap();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().parse::<u64>().unwrap())
            .unwrap()
    };
    (field("wchar:"), field("write_bytes:"))
}

fn io_mode(kind: Kind, commits: usize, size: usize) {
    let dir = std::env::temp_dir().join(format!("tidings-storage-io-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    {
        let mut log = open_log(kind, &dir);
        let b = batch(size, None, 0);
        log.append(1, &b, false); // creates the tables and the channel row
        let (w0, b0) = proc_io();
        let start = Instant::now();
        for _ in 0..commits {
            log.append(1, &b, false);
        }
        let el = start.elapsed().as_secs_f64();
        let (w1, b1) = proc_io();
        println!(
            "{}: {commits} commits of {size}: {:.0} bytes written by syscalls/commit, {:.0} bytes to storage/commit, {:.0} commits/s",
            kind.name(),
            (w1 - w0) as f64 / commits as f64,
            (b1 - b0) as f64 / commits as f64,
            commits as f64 / el
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Show which index the bundled SQLite picks for the dedup lookup of the embedded log.
fn print_plans() {
    for covering in [false, true] {
        let conn = Connection::open_in_memory().unwrap();
        sqlite_init(&conn, covering).unwrap();
        let plan: Vec<String> = conn
            .prepare(
                "EXPLAIN QUERY PLAN SELECT serial FROM messages
                 WHERE channel_id = ?1 AND msg_id = ?2 AND ts >= ?3 LIMIT 1",
            )
            .unwrap()
            .query_map(params![1, "x", 0], |r| r.get::<_, String>(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        eprintln!(
            "SQLite {} dedup lookup plan ({} index): {}",
            rusqlite::version(),
            if covering { "covering" } else { "embedded log" },
            plan.join("; ")
        );
    }
}

fn drop_caches(cold: bool) {
    if cold {
        let _ = Command::new("sync").status();
        let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // Child mode: append one commit of 1024 messages and die without closing (crash simulation).
    if args.get(1).map(String::as_str) == Some("crash-child") {
        let kind = Kind::parse(&args[2]);
        let dir = PathBuf::from(&args[3]);
        let mut log = open_log(kind, &dir);
        let mut rng = Rng(0xc4a5);
        log.append(1, &batch(1024, Some(&mut rng), 7), false);
        std::process::abort();
    }
    // I/O mode: `io ENGINE COMMITS SIZE` makes COMMITS durable commits of SIZE messages and prints
    // the bytes written per commit (/proc/self/io). Run it under `strace -c -f` to count fsyncs.
    if args.get(1).map(String::as_str) == Some("io") {
        let kind = Kind::parse(&args[2]);
        let commits: usize = args[3].parse().unwrap();
        let size: usize = args[4].parse().unwrap();
        io_mode(kind, commits, size);
        return;
    }
    let mut runs = 3usize;
    let mut secs = 3.0f64;
    let mut fill_n = 1_000_000u64;
    let mut range_n = 200_000u64;
    let mut cold = false;
    // Comma-separated subset of: append, dedup, range, fill.
    let mut only: Option<String> = None;
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runs" => runs = it.next().unwrap().parse().unwrap(),
            "--secs" => secs = it.next().unwrap().parse().unwrap(),
            "--fill" => fill_n = it.next().unwrap().parse().unwrap(),
            "--range" => range_n = it.next().unwrap().parse().unwrap(),
            "--cold" => cold = true,
            "--only" => only = Some(it.next().unwrap().clone()),
            other => panic!("unknown argument {other}"),
        }
    }
    let root = std::env::temp_dir().join(format!("tidings-storage-bench-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    struct Cleanup(PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(root.clone());
    eprintln!("data in {}; runs={runs} secs={secs} fill={fill_n} range={range_n}", root.display());

    print_plans();
    let engines = [Kind::Sqlite, Kind::Redb];

    // Engines are interleaved inside each run (run 1: A, B; run 2: A, B; ...) so that noise
    // from the shared machine falls on all of them alike.
    let mut acc = Acc(Vec::new());

    let want = |t: &str| only.as_deref().is_none_or(|o| o.split(',').any(|x| x == t));

    // 1. Group-commit append throughput (durable commits), fresh database per run.
    for size in [1usize, 64, 1024].into_iter().filter(|_| want("append")) {
        let kinds: &[Kind] = if size <= 64 {
            &[Kind::Sqlite, Kind::Redb, Kind::RedbQuick]
        } else {
            &engines
        };
        for r in 0..runs {
            for &kind in kinds {
                let d = fresh_dir(&root, &format!("append-{}-{size}-{r}", kind.name()));
                let (ms, cs) = run_append(kind, &d, size, secs, false);
                let test = format!("append, {size} msg/commit");
                acc.push(&test, kind, "msg/s", ms);
                acc.push(&test, kind, "commits/s", cs);
                std::fs::remove_dir_all(&d).unwrap();
            }
        }
    }

    // 3. Dedup: every message carries a fresh random 32-char id, looked up before insert.
    for size in [64usize, 1024].into_iter().filter(|_| want("dedup")) {
        for r in 0..runs {
            for kind in [Kind::Sqlite, Kind::SqliteCovering, Kind::Redb] {
                let d = fresh_dir(&root, &format!("dedup-{}-{size}-{r}", kind.name()));
                let (ms, _) = run_append(kind, &d, size, secs, true);
                acc.push(&format!("append+dedup, {size} msg/commit"), kind, "msg/s", ms);
                std::fs::remove_dir_all(&d).unwrap();
            }
        }
    }

    // 2. Range read: channel 1 holds range_n messages interleaved with as many in channel 2.
    let mut range_dirs = Vec::new();
    for kind in engines.into_iter().filter(|_| want("range")) {
        let d = fresh_dir(&root, &format!("range-{}", kind.name()));
        let mut log = open_log(kind, &d);
        let mut done = 0u64;
        while done < range_n {
            let n = 1024.min(range_n - done) as usize;
            log.append(1, &batch(n, None, done), false);
            log.append(2, &batch(n, None, done + 1), false);
            done += n as u64;
        }
        drop(log);
        range_dirs.push((kind, d));
    }
    for (label, is_cold) in [("warm", false), ("cold", true)] {
        if is_cold && !cold {
            continue;
        }
        for _ in 0..runs {
            for (kind, d) in &range_dirs {
                drop_caches(is_cold);
                let start = Instant::now();
                let n = match kind {
                    Kind::Sqlite | Kind::SqliteCovering => sqlite_read(d, 1, range_n, 1000),
                    _ => redb_read(d, 1, range_n, 1000),
                };
                assert_eq!(n, range_n);
                let test = format!("range read {range_n}, pages of 1000 ({label} cache)");
                acc.push(&test, *kind, "msg/s", n as f64 / start.elapsed().as_secs_f64());
                if !is_cold {
                    // CPU time of this thread over 10 more passes: insensitive to other load.
                    let cpu0 = thread_cpu_secs();
                    for _ in 0..10 {
                        match kind {
                            Kind::Sqlite | Kind::SqliteCovering => sqlite_read(d, 1, range_n, 1000),
                            _ => redb_read(d, 1, range_n, 1000),
                        };
                    }
                    let cpu = thread_cpu_secs() - cpu0;
                    let test = format!("range read {range_n}, CPU time per message");
                    acc.push(&test, *kind, "ns", cpu * 1e9 / (10 * range_n) as f64);
                }
            }
        }
    }
    for (_, d) in range_dirs {
        std::fs::remove_dir_all(&d).unwrap();
    }

    // 4. File size, bulk fill time, clean reopen and reopen after a crash.
    for ids in [false, true].into_iter().filter(|_| want("fill")) {
        let tag = if ids { "with ids" } else { "no ids" };
        let kinds: &[Kind] = if ids {
            &[Kind::Sqlite, Kind::SqliteCovering, Kind::Redb, Kind::RedbQuick]
        } else {
            &engines
        };
        let n = fmt_num(fill_n as f64);
        for r in 0..runs {
            for &kind in kinds {
                let d = fresh_dir(&root, &format!("fill-{}-{r}", kind.name()));
                let t = fill(kind, &d, fill_n, ids);
                let size = dir_size(&d) as f64 / (1024.0 * 1024.0);
                acc.push(&format!("file size, {n} msgs, {tag}"), kind, "MiB", size);
                let rate = fill_n as f64 / t.as_secs_f64();
                acc.push(&format!("bulk fill (1024/commit), {tag}"), kind, "msg/s", rate);
                drop_caches(cold);
                let (o, scan, nch) = reopen(kind, &d);
                assert_eq!(nch, 10);
                let test = format!("clean reopen + heads, {tag}");
                acc.push(&test, kind, "ms", o.as_secs_f64() * 1e3);
                if let Some(s) = scan {
                    let test = format!("+ MAX(ts) scan of the embedded log open, {tag}");
                    acc.push(&test, kind, "ms", s.as_secs_f64() * 1e3);
                }
                let st = Command::new(std::env::current_exe().unwrap())
                    .args(["crash-child", kind.name(), d.to_str().unwrap()])
                    .stderr(std::process::Stdio::null())
                    .status()
                    .unwrap();
                assert!(!st.success(), "crash child should have aborted");
                drop_caches(cold);
                let (o, _, nch) = reopen(kind, &d);
                assert_eq!(nch, 10);
                let test = format!("reopen after crash, {tag}");
                acc.push(&test, kind, "ms", o.as_secs_f64() * 1e3);
                if kind == Kind::Redb {
                    let mut db = redb::Database::create(d.join(REDB_FILE)).unwrap();
                    while db.compact().unwrap() {}
                    drop(db);
                    let size = dir_size(&d) as f64 / (1024.0 * 1024.0);
                    acc.push(&format!("file size after compact(), {tag}"), kind, "MiB", size);
                }
                std::fs::remove_dir_all(&d).unwrap();
            }
        }
    }

    let mut table = Table { rows: Vec::new() };
    for (test, kind, unit, v) in &acc.0 {
        table.add(test, *kind, unit, v);
    }
    table.print();
}

/// Results in first-seen order: (test, engine, unit) -> values of each run.
struct Acc(Vec<(String, Kind, String, Vec<f64>)>);

impl Acc {
    fn push(&mut self, test: &str, kind: Kind, unit: &str, v: f64) {
        eprintln!("  {test} / {} : {} {unit}", kind.name(), fmt_num(v));
        match self
            .0
            .iter_mut()
            .find(|(t, k, u, _)| t == test && *k == kind && u == unit)
        {
            Some(row) => row.3.push(v),
            None => self.0.push((test.to_owned(), kind, unit.to_owned(), vec![v])),
        }
    }
}
