//! `wallet migrate-history`: moves the histories written in the older format (a
//! `wallet:{id}:history` stream per wallet) into the history lists (`wallet:{id}:log`), so that
//! a wallet's history costs no stream node (4 KB preallocated under Redis's defaults).
//!
//! Nothing needs it to run: every reader reads the stream and the log of a wallet together (the
//! stream's entries first), and the trim takes the stream's entries first, deleting the stream
//! once it is empty. It frees the memory of wallets that are not trimmed soon.
//!
//! One script per wallet and batch, run where the wallet's keys are (one Redis, or each
//! primary of a cluster): it takes the newest compact entries of the stream (at most
//! [`MIGRATE_BATCH_LIMIT`]), pushes them as log lines at the head of the log, deletes them from
//! the stream and deletes the stream once it is empty. The whole history (stream, then log)
//! stays in the same order with the same entry numbers after every batch, and a batch is one
//! atomic step, so the engine may keep running. An entry in the original long format (the
//! Python system's, or this project's before the compact one) is not migrated: it and the
//! stream entries before it stay in the stream, where they are still read and trimmed, and the
//! wallet is counted as left. The audit names entries by id, which changes for a moved entry
//! (`<ms>-<seq>` becomes `<ms>-v<n>`): an audit running at the same time may report moved
//! entries; run it again after.
//!
//! Owns the migration script and the scan for streams. Does not own the log format
//! (`engine::wallet`) or the trim (`engine::retention`).

use crate::engine::cluster::ClusterError;
use crate::engine::service::WalletService;
use crate::engine::store::{self, Conn};

/// Most entries one script run moves.
pub const MIGRATE_BATCH_LIMIT: u64 = 1_000;
/// Most batches for one wallet in one run (a million entries at most).
pub const MIGRATE_BATCHES_PER_WALLET_MAX: u32 = 1_000;

/// What a migration did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MigrateReport {
    /// Wallets whose stream was moved whole into the log and deleted.
    pub wallets_migrated: u64,
    /// Wallets whose stream still holds entries it could not move (the long format).
    pub wallets_left: u64,
    /// Entries moved.
    pub entries_moved: u64,
}

impl std::fmt::Display for MigrateReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "migrated {} wallet histories ({} entries) to the list format; {} left with entries in the long format (still read and trimmed)",
            self.wallets_migrated, self.entries_moved, self.wallets_left
        )
    }
}

/// Why a migration stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MigrateError {
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// No pooled connection.
    #[error("redis pool: {0}")]
    Pool(#[from] r2d2::Error),
    /// A cluster's map or a node could not be had.
    #[error("redis cluster: {0}")]
    Cluster(#[from] ClusterError),
}

/// One batch: moves the newest compact entries of the stream KEYS[1] (at most ARGV[1]) to the
/// head of the log KEYS[2] as log lines (`wallet::format_log_entry`: the stream id's time in
/// base 36, the kind's sign, the amount, the ids; the stored balance is dropped, readers compute it), newest
/// first so the oldest ends first; deletes the stream when it is empty. Returns {moved, left}: left is the number of entries still in the stream, 0 when
/// it was deleted.
const MIGRATE_LUA: &str = r#"
local function base36(n)
  local digits = '0123456789abcdefghijklmnopqrstuvwxyz'
  local out = ''
  repeat
    local d = n % 36
    out = string.sub(digits, d + 1, d + 1) .. out
    n = (n - d) / 36
  until n == 0
  return out
end
local entries = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', tonumber(ARGV[1]))
local moved = 0
for _, entry in ipairs(entries) do
  local f = {}
  local raw = entry[2]
  for i = 1, #raw, 2 do f[raw[i]] = raw[i + 1] end
  local ms = string.match(entry[1], '^(%d+)%-')
  if not (ms and #ms <= 15 and f.t and f.d and f.a) then break end
  if not (string.match(f.d, '^[dcp]$') and string.match(f.a, '^%d+$')
      and string.match(f.t, '^%S+$')) then break end
  local sign = ({d = '-', c = '+', p = '^'})[f.d]
  local line = base36(tonumber(ms)) .. sign .. f.a .. ' ' .. f.t
  if f.k and f.k ~= '' then
    if not string.match(f.k, '^%S+$') then break end
    line = line .. ' ' .. f.k
  end
  redis.call('LPUSH', KEYS[2], line)
  redis.call('XDEL', KEYS[1], entry[1])
  moved = moved + 1
end
local left = redis.call('XLEN', KEYS[1])
if left == 0 then redis.call('DEL', KEYS[1]) end
return {moved, left}
"#;

/// Moves every wallet's older history stream into its log, on one Redis or every primary of
/// a cluster.
pub fn migrate_histories(service: &WalletService) -> Result<MigrateReport, MigrateError> {
    let mut report = MigrateReport::default();
    let topology = service.topology();
    let pattern = topology.key_space().history_stream_pattern();
    for shard in topology.shards() {
        let mut conn = topology.conn_for_shard::<MigrateError>(&shard)?;
        migrate_node(&mut conn, pattern, &mut report)?;
    }
    Ok(report)
}

/// Every stream matching `pattern` on this node, migrated one wallet after another.
fn migrate_node(
    conn: &mut Conn,
    pattern: &str,
    report: &mut MigrateReport,
) -> Result<(), MigrateError> {
    let script = redis::Script::new(MIGRATE_LUA);
    store::scan_each(conn, None, pattern, Some("stream"), |conn, batch| {
        for stream in batch {
            migrate_wallet(conn, &script, &stream, report)?;
        }
        Ok::<_, MigrateError>(())
    })
}

/// One wallet's stream, batch after batch until it is gone or what is left cannot move.
fn migrate_wallet(
    conn: &mut Conn,
    script: &redis::Script,
    stream: &str,
    report: &mut MigrateReport,
) -> Result<(), MigrateError> {
    let Some(prefix) = stream.strip_suffix(":history") else {
        return Ok(());
    };
    let log = format!("{prefix}:log");
    for _ in 0..MIGRATE_BATCHES_PER_WALLET_MAX {
        let (moved, left): (u64, u64) = script
            .key(stream)
            .key(&log)
            .arg(MIGRATE_BATCH_LIMIT)
            .invoke(&mut conn.redis)?;
        report.entries_moved += moved;
        if left == 0 {
            report.wallets_migrated += 1;
            return Ok(());
        }
        if moved == 0 {
            break;
        }
    }
    report.wallets_left += 1;
    Ok(())
}
