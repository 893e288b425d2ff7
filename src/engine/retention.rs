//! History retention in Redis (ARCHITECTURE.md, "Retention"): a wallet keeps at most
//! `history_max_entries` entries (default 1,000) in its history (the `wallet:{id}:log` list,
//! after what is left of an older `wallet:{id}:history` stream); older ones are trimmed and
//! their sum is kept in the wallet's checkpoint, in the same transaction as the trim. Entry
//! number `n` is at index `n - hc - 1` of the whole history (stream entries first), so an
//! LTRIM of the oldest lines keeps the numbering.
//!
//! The checkpoint is three fields of `wallet:{id}`: `hc`, the number of entries trimmed so far,
//! `hb`, their signed sum in cents, and `hd`, the part of that sum that came from deposits (all
//! absent until the first trim). With them the ledger invariants still hold exactly over the
//! window Redis keeps:
//!
//! ```text
//! balance = opening_balance + hb + signed sum of the retained entries      (per wallet)
//! version = hc + number of retained entries                                (per wallet)
//! sum of balances = openings + sum of hd + retained deposits               (per currency)
//! ```
//!
//! The last one is what catches money created by editing a balance and its checkpoint
//! together: transfers move money between wallets, so only deposits change the total.
//!
//! Entry number `n` of a wallet (1-based, counted since its creation) is the one that made its
//! version `n`; it has been trimmed when `n <= hc`. Transfer outcomes record the versions they
//! made (`fv`, `tv`), so the audit knows which of their entries were trimmed.
//!
//! The trim runs as a script inside the transfer's (or deposit's) MULTI/EXEC, so the entries,
//! the checkpoint and the balance change commit together or not at all. The script reads the
//! oldest entries beyond the window (those of an older stream first), sums them, trims exactly
//! those (XTRIM of the stream, deleted once empty; LTRIM of the log) and adds them to the
//! checkpoint. `XADD ... MAXLEN ~` would be cheaper but cannot be used: it drops entries
//! without saying what they held, and the checkpoint could not be kept exact (and a list has no
//! such option). The script is sent by EVAL, not EVALSHA (a script cache emptied by a restart
//! cannot fail a transaction), and only when a trim is due: when the transfer or deposit takes
//! a wallet past `history_max_entries` by [`trim_slack`] (an eighth), known from the version
//! and `hc` read under WATCH, so its cost is spread over many transfers. One run trims at most
//! [`HISTORY_TRIM_BATCH_LIMIT`] (1,000) entries, so a long history left by an older version is
//! cut down over several transfers without blocking Redis.
//!
//! The full history lives in Kafka: the worker publishes every entry a transfer makes to the
//! ledger topic (`wallet.ledger`, `worker::ledger`), which keeps them for ever, so the entries
//! trimmed from Redis stay there when the worker made them; `wallet history` reads the window
//! from Redis and the older entries from the topic.
//!
//! Owns the checkpoint fields, the trim script and when it runs. Does not own the history
//! entry format (`wallet`) or the transaction around it (`transfer`, `wallet::deposit`).

use std::collections::HashMap;

use crate::engine::keyspace::KeySpace;
use crate::engine::money::Amount;

/// Most entries one trim removes (one script run inside a transaction).
pub const HISTORY_TRIM_BATCH_LIMIT: u64 = 1_000;
/// Upper bound for the `history_max_entries` setting.
pub const HISTORY_MAX_ENTRIES_LIMIT: u64 = 1_000_000_000;

/// Checkpoint field: the number of history entries trimmed from Redis.
pub const CHECKPOINT_ENTRIES_FIELD: &str = "hc";
/// Checkpoint field: the signed sum, in cents, of the trimmed entries.
pub const CHECKPOINT_NET_FIELD: &str = "hb";
/// Checkpoint field: the sum, in cents, of the trimmed deposits.
pub const CHECKPOINT_DEPOSITS_FIELD: &str = "hd";

/// What a wallet's trimmed history summed to: the moves before the window Redis keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// Entries trimmed (`hc`): the window starts at entry number `entries + 1`.
    pub entries: u64,
    /// Their signed sum (`hb`): credits and deposits minus debits.
    pub net: Amount,
    /// The deposits among them (`hd`).
    pub deposits: Amount,
}

impl Checkpoint {
    /// Reads the checkpoint fields of a `wallet:{id}` hash; absent fields are zero. The error
    /// names the field.
    pub fn from_fields(f: &HashMap<String, String>) -> Result<Checkpoint, String> {
        let entries = match f.get(CHECKPOINT_ENTRIES_FIELD) {
            None => 0,
            Some(v) => v
                .parse()
                .map_err(|_| format!("{CHECKPOINT_ENTRIES_FIELD} {v:?} is not a whole number"))?,
        };
        let cents = |name: &str| match f.get(name) {
            None => Ok(Amount::ZERO),
            Some(v) => v
                .parse::<i64>()
                .map(Amount::from_minor)
                .map_err(|_| format!("{name} {v:?} is not a whole number of cents")),
        };
        Ok(Checkpoint {
            entries,
            net: cents(CHECKPOINT_NET_FIELD)?,
            deposits: cents(CHECKPOINT_DEPOSITS_FIELD)?,
        })
    }
}

/// Entries a wallet may hold beyond `max_entries` before a trim runs: an eighth, at least 1.
/// Pure.
pub fn trim_slack(max_entries: u64) -> u64 {
    (max_entries / 8).max(1)
}

/// Whether a wallet whose version becomes `version_after` should be trimmed now. Pure.
pub fn trim_due(version_after: u64, checkpoint: &Checkpoint, max_entries: u64) -> bool {
    version_after.saturating_sub(checkpoint.entries) > max_entries + trim_slack(max_entries)
}

/// The trim, as one script: reads the oldest entries beyond `keep` (at most the batch limit),
/// those of the older stream first (either of its entry formats; the stream is deleted once
/// empty, so its preallocated node goes with it), then the log's, sums them in cents, trims
/// exactly those (XTRIM, LTRIM) and adds them to the checkpoint. Returns the number trimmed, or -1 (writing nothing) when an entry cannot be
/// read, so that a damaged entry is never summed wrongly (the audit names it). A batch whose
/// sum would leave the integers a Lua number holds exactly (2^53 cents) stops before that
/// entry; the next trim goes on from there.
const TRIM_LUA: &str = r#"
local keep = tonumber(ARGV[1])
local batch = tonumber(ARGV[2])
local slen = redis.call('XLEN', KEYS[2])
local llen = redis.call('LLEN', KEYS[3])
local excess = slen + llen - keep
if excess <= 0 then return 0 end
if excess > batch then excess = batch end
local net = 0
local deposits = 0
local from_stream = 0
local from_log = 0
local function add(kind, cents)
  if not cents then return false end
  if math.abs(net) + cents > 9007199254740991 then return nil end
  if kind == 'd' or kind == 'debit' then
    net = net - cents
  elseif kind == 'c' or kind == 'credit' then
    net = net + cents
  elseif kind == 'p' or kind == 'deposit' then
    net = net + cents
    deposits = deposits + cents
  else
    return false
  end
  return true
end
if slen > 0 then
  for _, entry in ipairs(redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', math.min(excess, slen))) do
    local f = entry[2]
    local kind, cents
    for i = 1, #f, 2 do
      local name, value = f[i], f[i + 1]
      if name == 'd' or name == 'kind' then
        kind = value
      elseif name == 'a' then
        if not string.match(value, '^%d+$') then return -1 end
        cents = tonumber(value)
      elseif name == 'amount' then
        local whole, frac = string.match(value, '^(%d+)%.?(%d?%d?)$')
        if not whole then return -1 end
        cents = tonumber(whole) * 100 + tonumber(string.sub(frac .. '00', 1, 2))
      end
    end
    local ok = add(kind, cents)
    if ok == false then return -1 end
    if ok == nil then break end
    from_stream = from_stream + 1
  end
end
if from_stream == slen and from_stream < excess then
  for _, line in ipairs(redis.call('LRANGE', KEYS[3], 0, excess - from_stream - 1)) do
    local sign, amount = string.match(line, '^[0-9a-z]+([-+^])(%d+) %S')
    local kind = ({['-'] = 'd', ['+'] = 'c', ['^'] = 'p'})[sign or '']
    local ok = add(kind, tonumber(amount))
    if ok == false then return -1 end
    if ok == nil then break end
    from_log = from_log + 1
  end
end
local summed = from_stream + from_log
if summed == 0 then return -1 end
if from_stream == slen and slen > 0 then
  redis.call('DEL', KEYS[2])
elseif from_stream > 0 then
  redis.call('XTRIM', KEYS[2], 'MAXLEN', slen - from_stream)
end
if from_log > 0 then redis.call('LTRIM', KEYS[3], from_log, -1) end
redis.call('HINCRBY', KEYS[1], 'hc', summed)
redis.call('HINCRBY', KEYS[1], 'hb', string.format('%d', net))
if deposits > 0 then redis.call('HINCRBY', KEYS[1], 'hd', string.format('%d', deposits)) end
return summed
"#;

/// Adds the trim of `wallet_id`'s history down to `max_entries` to a pipeline, inside the
/// caller's MULTI, after its history entry (RPUSH). Its reply is the number trimmed (or -1, see the script).
/// EVAL, not EVALSHA: a script cache emptied by a restart would fail the command inside the
/// transaction; the body is sent only when a trim is due.
/// The keys are named as in `space` (one Redis, or a cluster, where both are in the wallet's
/// slot).
pub(crate) fn add_trim_in(
    space: KeySpace,
    pipe: &mut redis::Pipeline,
    wallet_id: &str,
    max_entries: u64,
) {
    pipe.cmd("EVAL")
        .arg(TRIM_LUA)
        .arg(3)
        .arg(space.wallet(wallet_id))
        .arg(space.history(wallet_id))
        .arg(space.log(wallet_id))
        .arg(max_entries)
        .arg(HISTORY_TRIM_BATCH_LIMIT);
}

/// Logs a trim that could not run because an entry is unreadable (reply -1).
pub(crate) fn report_trim(wallet_id: &str, reply: i64) {
    if reply < 0 {
        log::warn!(
            "history of wallet {wallet_id} not trimmed: one of its oldest entries cannot be read (run wallet audit; its history stays whole until the entry is repaired)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trim_is_due_only_past_the_slack() {
        let none = Checkpoint::default();
        assert!(!trim_due(100, &none, 100));
        assert!(!trim_due(112, &none, 100), "slack is 100/8 = 12");
        assert!(trim_due(113, &none, 100));
        let trimmed = Checkpoint {
            entries: 13,
            ..Checkpoint::default()
        };
        assert!(!trim_due(113, &trimmed, 100), "100 retained");
        assert_eq!(trim_slack(1), 1);
        assert!(trim_due(3, &none, 1));
    }

    #[test]
    fn a_checkpoint_reads_absent_fields_as_zero_and_names_a_bad_one() {
        let mut f = HashMap::new();
        assert_eq!(Checkpoint::from_fields(&f), Ok(Checkpoint::default()));
        f.insert("hc".to_string(), "3".to_string());
        f.insert("hb".to_string(), "-250".to_string());
        f.insert("hd".to_string(), "100".to_string());
        assert_eq!(
            Checkpoint::from_fields(&f),
            Ok(Checkpoint {
                entries: 3,
                net: Amount::from_minor(-250),
                deposits: Amount::from_minor(100),
            })
        );
        f.insert("hb".to_string(), "2.50".to_string());
        assert!(Checkpoint::from_fields(&f).unwrap_err().starts_with("hb"));
    }
}
