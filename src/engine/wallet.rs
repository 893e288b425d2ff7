//! Wallets and users in Redis: creating them, reading them, deposits, and the history.
//!
//! Owns the shape of the `user:{id}` and `wallet:{id}` hashes and of the history entries
//! (ARCHITECTURE.md, "Redis data model"), in either key space: one creation for both, grouped
//! by shard through `topology` (a cluster's shard is a primary, with no `users:all` or
//! `wallets:all` index). Does not move money between wallets; that is `transfer`.
//!
//! A history is a Redis list, `wallet:{id}:log`, one compact line per entry
//! (`format_log_entry`), oldest first: entry number `n` (the one that made version `n`) is at
//! index `n - hc - 1` once the older stream is gone. A list this small is one listpack with
//! nothing preallocated, where a stream's first node preallocates `stream-node-max-bytes`
//! (4 KB by Redis's default): a wallet's hash and history with an entry or two hold about 480
//! bytes (`bench --direct`'s `wallet_bytes`), about 5,000 with a stream (issue 24). Histories written before
//! (the `wallet:{id}:history` stream, either entry format) are still read, trimmed first and
//! moved into the log by `wallet migrate-history`; a wallet's history is the stream's entries
//! then the log's. A new key name rather than the same key with another type: the
//! transaction writes without knowing which format a wallet has (no TYPE read under WATCH, no
//! extra command on the two round trips, no WRONGTYPE inside EXEC), and a reader reads both
//! keys in one MULTI/EXEC (a missing key reads empty).

use std::collections::HashMap;

use crate::engine::cluster::ClusterError;
use crate::engine::keyspace::KeySpace;
use crate::engine::message::{FieldError, check_user_id, now_ms};
use crate::engine::money::{Amount, Currency};
use crate::engine::retention::{self, Checkpoint};
use crate::engine::service::WalletService;
use crate::engine::store::{Conn, PooledConn};

/// A wallet as stored in `wallet:{id}`. Data the engine returns; not `#[non_exhaustive]`, so
/// a new field comes only in a minor release (docs/library.md, "Compatibility").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wallet {
    /// The wallet id (the same as the user id).
    pub wallet_id: String,
    /// The owner.
    pub user_id: String,
    /// The balance now.
    pub balance: Amount,
    /// The balance it was created with.
    pub opening_balance: Amount,
    /// The only currency it takes.
    pub currency: Currency,
    /// Only an active wallet sends, receives or takes deposits.
    pub status: WalletStatus,
    /// Creation time, Unix seconds as text (the original system's format).
    pub created_at: String,
    /// +1 on every balance change: the number of history entries it has ever had.
    pub version: u64,
    /// The entries trimmed from its Redis history and their sum (see
    /// [`crate::engine::retention`]); zero until the first trim.
    pub checkpoint: Checkpoint,
}

/// A wallet's `status` field. Not `#[non_exhaustive]`: these are the values the stored data
/// model (shared with the original system) has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalletStatus {
    /// Sends, receives and takes deposits.
    Active,
    /// Set by an operator: transfers on it fail `wallet_inactive`.
    Frozen,
    /// Set by an operator: transfers on it fail `wallet_inactive`.
    Closed,
}

impl WalletStatus {
    /// The stored text: `active`, `frozen` or `closed`.
    pub fn as_str(self) -> &'static str {
        match self {
            WalletStatus::Active => "active",
            WalletStatus::Frozen => "frozen",
            WalletStatus::Closed => "closed",
        }
    }

    /// Parses the stored text; `None` for anything else.
    pub fn parse(text: &str) -> Option<WalletStatus> {
        match text {
            "active" => Some(WalletStatus::Active),
            "frozen" => Some(WalletStatus::Frozen),
            "closed" => Some(WalletStatus::Closed),
            _ => None,
        }
    }
}

/// A user and wallet to create, for [`WalletService::create_wallet`]:
///
/// ```
/// use wallet_transfer::{Amount, Currency, NewWallet};
///
/// let alice = NewWallet::new("alice", Amount::parse("100.00")?, Currency::USD)
///     .with_full_name("Alice Liddell")
///     .with_email("alice@example.com");
/// assert_eq!(alice.user_id, "alice");
/// # Ok::<(), wallet_transfer::engine::money::AmountError>(())
/// ```
///
/// `#[non_exhaustive]`: build it with [`NewWallet::new`] and the `with_*` setters.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NewWallet {
    /// The user id, which is also the wallet id: `^[A-Za-z0-9_-]{1,64}$`.
    pub user_id: String,
    /// The user's name, stored in `user:{id}`; free text.
    pub full_name: String,
    /// The user's email, stored in `user:{id}`; free text, not checked.
    pub email: String,
    /// The balance the wallet starts with; not negative. The ledger audit counts it in.
    pub opening_balance: Amount,
    /// The wallet's currency; transfers must be in it.
    pub currency: Currency,
}

impl NewWallet {
    /// A wallet for `user_id` with its opening balance and currency; the user's name is the id
    /// and the email is empty until set.
    pub fn new(user_id: &str, opening_balance: Amount, currency: Currency) -> NewWallet {
        NewWallet {
            user_id: user_id.to_string(),
            full_name: user_id.to_string(),
            email: String::new(),
            opening_balance,
            currency,
        }
    }

    /// Sets [`NewWallet::full_name`].
    #[must_use]
    pub fn with_full_name(mut self, full_name: &str) -> NewWallet {
        self.full_name = full_name.to_string();
        self
    }

    /// Sets [`NewWallet::email`].
    #[must_use]
    pub fn with_email(mut self, email: &str) -> NewWallet {
        self.email = email.to_string();
        self
    }
}

/// One entry of `wallet:{id}:history`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The entry's id: the stream entry id (`<ms>-<seq>`) of an entry in the older stream,
    /// `<ms>-v<n>` for a line of the log, `n` its entry number (the version it made).
    pub stream_id: String,
    /// The transfer (or the deposit, `dep_<uuid>`) that made it.
    pub transfer_id: String,
    /// The idempotency key of the transfer (or the id of the deposit) that made this entry;
    /// `None` on entries written before the key was recorded.
    pub idempotency_key: Option<String>,
    /// Debit, credit or deposit.
    pub kind: HistoryKind,
    /// The amount, always positive; [`HistoryKind::signed`] gives the change.
    pub amount: Amount,
    /// The wallet's balance right after this entry.
    pub balance_after: Amount,
    /// When, in milliseconds since the Unix epoch: the log line's time, the stream id's for
    /// compact stream entries, the `at` field for entries in the long format.
    pub at_ms: u64,
}

/// What a history entry did to the balance. Not `#[non_exhaustive]`: the values of the stored
/// data model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryKind {
    /// Money sent by a transfer.
    Debit,
    /// Money received by a transfer.
    Credit,
    /// Money put in by [`WalletService::deposit`].
    Deposit,
}

impl HistoryKind {
    /// The stored text: `debit`, `credit` or `deposit`.
    pub fn as_str(self) -> &'static str {
        match self {
            HistoryKind::Debit => "debit",
            HistoryKind::Credit => "credit",
            HistoryKind::Deposit => "deposit",
        }
    }

    /// The one-letter code of the compact history format: `d`, `c` or `p`.
    pub fn code(self) -> &'static str {
        match self {
            HistoryKind::Debit => "d",
            HistoryKind::Credit => "c",
            HistoryKind::Deposit => "p",
        }
    }

    /// The sign of the kind in a log line: `-`, `+` or `^`.
    pub fn sign(self) -> char {
        match self {
            HistoryKind::Debit => '-',
            HistoryKind::Credit => '+',
            HistoryKind::Deposit => '^',
        }
    }

    /// Parses [`HistoryKind::sign`]; `None` for anything else.
    pub fn from_sign(sign: char) -> Option<HistoryKind> {
        match sign {
            '-' => Some(HistoryKind::Debit),
            '+' => Some(HistoryKind::Credit),
            '^' => Some(HistoryKind::Deposit),
            _ => None,
        }
    }

    /// Parses [`HistoryKind::code`]; `None` for anything else.
    pub fn from_code(code: &str) -> Option<HistoryKind> {
        match code {
            "d" => Some(HistoryKind::Debit),
            "c" => Some(HistoryKind::Credit),
            "p" => Some(HistoryKind::Deposit),
            _ => None,
        }
    }

    /// The signed change this entry made to the balance.
    pub fn signed(self, amount: Amount) -> Amount {
        match self {
            HistoryKind::Debit => Amount::from_minor(-amount.minor()),
            HistoryKind::Credit | HistoryKind::Deposit => amount,
        }
    }
}

/// Why a wallet operation (create, read, deposit, history) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalletError {
    /// No wallet with this id.
    #[error("wallet {0:?} does not exist")]
    NotFound(String),
    /// The wallet is frozen or closed.
    #[error("wallet {id:?} is {status}, not active")]
    Inactive {
        /// The wallet id.
        id: String,
        /// Its status (`frozen`, `closed`).
        status: &'static str,
    },
    /// An argument broke its rule (an id, a negative opening balance, an amount).
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// Stored data that cannot be read. Needs an operator.
    #[error("corrupt record {key}: {detail}")]
    Corrupt {
        /// The Redis key that does not read.
        key: String,
        /// What is wrong with it.
        detail: String,
    },
    /// A deposit's transaction kept aborting on concurrent changes; nothing was written.
    #[error("gave up after {0} concurrent changes to the wallet; try again")]
    Contended(u32),
    /// The deposit would take the balance past [`crate::engine::money::BALANCE_LIMIT`].
    #[error(
        "the deposit would take the balance past {}",
        crate::engine::money::BALANCE_LIMIT
    )]
    Overflow,
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// No pooled connection became free in time, or none could be opened.
    #[error("redis pool: {0}")]
    Pool(#[from] r2d2::Error),
    /// A Redis Cluster's map or a node's pool could not be had (mid-failover, a node down):
    /// retry later.
    #[error("redis cluster: {0}")]
    Cluster(#[from] ClusterError),
    /// The write is on the primary, but fewer replicas than
    /// [`crate::EngineConfig::wait_replicas`] acknowledged it in time: a failover now could
    /// lose it.
    #[error(
        "{what} is written on the primary, but only {acked} of {wanted} replicas acknowledged it within {timeout_ms} ms (a failover now could lose it): {advice}; check the replicas' links (INFO replication)"
    )]
    ReplicasBehind {
        /// What was written (`the deposit`, `the new wallets`).
        what: &'static str,
        /// What to do before trying again.
        advice: &'static str,
        /// Replicas that acknowledged.
        acked: u32,
        /// Replicas asked for.
        wanted: u32,
        /// How long the WAIT blocked.
        timeout_ms: u64,
    },
}

/// WAITs for [`crate::EngineConfig::wait_replicas`] replicas on the connection that wrote
/// `what`, when asked to; [`WalletError::ReplicasBehind`] when fewer acknowledged.
pub(crate) fn wait_replicas(
    conn: &mut Conn,
    wanted: Option<u32>,
    what: &'static str,
    advice: &'static str,
) -> Result<(), WalletError> {
    let Some(wanted) = wanted else {
        return Ok(());
    };
    let acked = crate::engine::service::wait_acked(conn, wanted)?;
    if acked < wanted {
        return Err(WalletError::ReplicasBehind {
            what,
            advice,
            acked,
            wanted,
            timeout_ms: crate::engine::service::WAIT_REPLICAS_TIMEOUT_MS,
        });
    }
    Ok(())
}

/// What to do after a deposit's [`WalletError::ReplicasBehind`]: deposits have no key.
const DEPOSIT_ADVICE: &str =
    "read the wallet's history before depositing again (a deposit has no idempotency key)";
/// What to do after new wallets' [`WalletError::ReplicasBehind`].
pub(crate) const CREATE_ADVICE: &str = "run it again (creating never overwrites a wallet)";

const CREATE_LUA: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[2], 'user_id', ARGV[1], 'full_name', ARGV[2], 'email', ARGV[3],
  'created_at', ARGV[6], 'status', 'active')
redis.call('HSET', KEYS[1], 'wallet_id', ARGV[1], 'user_id', ARGV[1], 'balance', ARGV[4],
  'opening_balance', ARGV[4], 'currency', ARGV[5], 'status', 'active', 'created_at', ARGV[6],
  'version', 0)
for i = 3, #KEYS do redis.call('SADD', KEYS[i], ARGV[1]) end
return 1
"#;

/// Most wallets created in one pipelined round trip.
pub const CREATE_BATCH_LIMIT: usize = 1_000;

impl WalletService {
    /// Creates the user and the wallet unless the wallet exists; never overwrites one.
    /// Returns whether it was created.
    pub fn create_wallet(&self, new: &NewWallet) -> Result<bool, WalletError> {
        Ok(self.create_wallets(std::slice::from_ref(new))? == 1)
    }

    /// Creates many wallets in pipelined batches; existing ones are skipped. Returns how many
    /// were created.
    pub fn create_wallets(&self, wallets: &[NewWallet]) -> Result<usize, WalletError> {
        for w in wallets {
            check_user_id("user_id", &w.user_id)?;
            if w.opening_balance.is_negative() {
                return Err(FieldError {
                    field: "opening_balance",
                    rule: format!("must not be negative, got {}", w.opening_balance),
                }
                .into());
            }
        }
        let (topology, space) = (&self.topology, self.key_space());
        let script = redis::Script::new(CREATE_LUA);
        let mut created = 0;
        for (shard, group) in topology.by_shard(wallets, |w| space.wallet(&w.user_id))? {
            let mut conn = topology.conn_for_shard::<WalletError>(&shard)?;
            created += create_in_batches(&mut conn, &script, &group, |w| {
                let mut keys = vec![space.wallet(&w.user_id), space.user(&w.user_id)];
                keys.extend(space.wallet_index_sets().iter().map(|s| s.to_string()));
                keys
            })
            .inspect_err(|e| topology.refresh_after(e))?;
            wait_replicas(
                &mut conn,
                self.config.wait_replicas,
                "the new wallets",
                CREATE_ADVICE,
            )?;
        }
        Ok(created)
    }

    /// The wallet of `user_id`, or `None` when there is none.
    pub fn wallet(&self, user_id: &str) -> Result<Option<Wallet>, WalletError> {
        let mut conn = self.wallet_conn(user_id)?;
        read_wallet_in(self.key_space(), &mut conn, user_id)
    }

    /// A connection to the Redis that holds `user_id`'s keys: the pool's on one Redis, its
    /// slot's primary on a cluster.
    fn wallet_conn(&self, user_id: &str) -> Result<PooledConn, WalletError> {
        self.topology
            .conn_for_key(&self.key_space().wallet(user_id))
    }

    /// The balance of `user_id`'s wallet.
    pub fn balance(&self, user_id: &str) -> Result<Amount, WalletError> {
        self.wallet(user_id)?
            .map(|w| w.balance)
            .ok_or_else(|| WalletError::NotFound(user_id.to_string()))
    }

    /// Adds `amount` to an active wallet, with a `deposit` history entry, atomically
    /// (WATCH/MULTI/EXEC). Returns the new balance.
    ///
    /// Unlike a transfer, a deposit has no idempotency key: each call is a new deposit. After
    /// [`WalletError::Contended`] nothing was written and it may be called again; after a
    /// `Redis` error the transaction may or may not have run, so read the wallet's
    /// [`WalletService::history`] before depositing again.
    pub fn deposit(&self, user_id: &str, amount: Amount) -> Result<Amount, WalletError> {
        check_user_id("user_id", user_id)?;
        if amount.minor() <= 0 || amount > crate::engine::money::AMOUNT_LIMIT {
            return Err(FieldError {
                field: "amount",
                rule: format!(
                    "must be greater than 0 and at most {}, got {amount}",
                    crate::engine::money::AMOUNT_LIMIT
                ),
            }
            .into());
        }
        let mut conn = self.wallet_conn(user_id)?;
        let deposit_id = format!("dep_{}", uuid::Uuid::new_v4().simple());
        for _ in 0..=self.config.watch_retries_max {
            let result = self.deposit_once(&mut conn, user_id, amount, &deposit_id);
            match result {
                Ok(Some(balance)) => {
                    let wanted = self.config.wait_replicas;
                    wait_replicas(&mut conn, wanted, "the deposit", DEPOSIT_ADVICE)?;
                    return Ok(balance);
                }
                Ok(None) => continue,
                Err(e) => {
                    let _ = redis::cmd("UNWATCH").query::<()>(&mut conn.redis);
                    if matches!(e, WalletError::Redis(_)) {
                        conn.taint();
                    }
                    return Err(e);
                }
            }
        }
        Err(WalletError::Contended(self.config.watch_retries_max))
    }

    /// One WATCHed attempt of [`WalletService::deposit`]: the new balance, or `None` when the
    /// wallet changed before EXEC.
    fn deposit_once(
        &self,
        conn: &mut Conn,
        user_id: &str,
        amount: Amount,
        deposit_id: &str,
    ) -> Result<Option<Amount>, WalletError> {
        let space = self.key_space();
        let key = space.wallet(user_id);
        redis::cmd("WATCH").arg(&key).query::<()>(&mut conn.redis)?;
        let wallet = read_wallet_in(space, conn, user_id)?
            .ok_or_else(|| WalletError::NotFound(user_id.to_string()))?;
        if wallet.status != WalletStatus::Active {
            return Err(WalletError::Inactive {
                id: user_id.to_string(),
                status: wallet.status.as_str(),
            });
        }
        let balance = wallet
            .balance
            .checked_add(amount)
            .ok()
            .filter(|b| *b <= crate::engine::money::BALANCE_LIMIT)
            .ok_or(WalletError::Overflow)?;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset(&key, "balance", balance.to_string())
            .ignore()
            .hincr(&key, "version", 1)
            .ignore();
        let mover = Mover {
            transfer_id: deposit_id,
            idempotency_key: deposit_id,
        };
        add_history_in(
            space,
            &mut pipe,
            user_id,
            &mover,
            HistoryKind::Deposit,
            amount,
            now_ms(),
        );
        pipe.ignore();
        let trim = self
            .config
            .history_max_entries
            .filter(|max| retention::trim_due(wallet.version + 1, &wallet.checkpoint, *max));
        if let Some(max_entries) = trim {
            retention::add_trim_in(space, &mut pipe, user_id, max_entries);
        }
        let done: Option<Vec<i64>> = pipe.query(&mut conn.redis)?;
        if let Some(reply) = done.as_ref().and_then(|r| r.first()) {
            retention::report_trim(user_id, *reply);
        }
        Ok(done.map(|_| balance))
    }

    /// The history entries of `user_id`'s wallet that Redis keeps (the last
    /// `history_max_entries`; the wallet's [`Wallet::checkpoint`] sums the older ones), oldest
    /// first: those of the older stream, then the log's, read in one MULTI/EXEC.
    pub fn history(&self, user_id: &str) -> Result<Vec<HistoryEntry>, WalletError> {
        let mut conn = self.wallet_conn(user_id)?;
        let space = self.key_space();
        type Read = (HashMap<String, String>, RawHistory, Vec<String>);
        let (wallet, stream, log): Read = redis::pipe()
            .atomic()
            .hgetall(space.wallet(user_id))
            .cmd("XRANGE")
            .arg(space.history(user_id))
            .arg("-")
            .arg("+")
            .lrange(space.log(user_id), 0, -1)
            .query(&mut conn.redis)?;
        let wallet = parse_wallet(space, user_id, &wallet)?;
        let trimmed = wallet.as_ref().map_or(0, |w| w.checkpoint.entries);
        let balance = wallet.map(|w| w.balance);
        combine_history(stream, &log, trimmed, balance)
            .into_iter()
            .map(|(id, fields)| parse_history(space, user_id, id, &fields))
            .collect()
    }
}

/// A wallet and the newest entries of its Redis history, read in one transaction (so a trim
/// cannot fall between them): see [`WalletService::history_window`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryWindow {
    /// The wallet, with its version and checkpoint.
    pub wallet: Wallet,
    /// Entries its Redis history holds (XLEN of the older stream plus LLEN of the log): versions `checkpoint.entries + 1 ..= version`
    /// when the two add up (`wallet audit` checks that they do).
    pub retained: u64,
    /// The newest of them, at most the number asked for, oldest first.
    pub newest: Vec<HistoryEntry>,
}

impl WalletService {
    /// `user_id`'s wallet and the newest `newest_max` entries Redis keeps of its history,
    /// read atomically (MULTI/EXEC): the newest of the log and, when the log holds fewer, of
    /// the older stream; `None` when the wallet does not exist.
    pub fn history_window(
        &self,
        user_id: &str,
        newest_max: u64,
    ) -> Result<Option<HistoryWindow>, WalletError> {
        type Read = (HashMap<String, String>, u64, u64, RawHistory, Vec<String>);
        let mut conn = self.wallet_conn(user_id)?;
        let space = self.key_space();
        let tail = -isize::try_from(newest_max.max(1)).unwrap_or(isize::MAX);
        let (fields, stream_len, log_len, stream, log): Read = redis::pipe()
            .atomic()
            .hgetall(space.wallet(user_id))
            .xlen(space.history(user_id))
            .llen(space.log(user_id))
            .cmd("XREVRANGE")
            .arg(space.history(user_id))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(newest_max)
            .lrange(space.log(user_id), tail, -1)
            .query(&mut conn.redis)?;
        let Some(wallet) = parse_wallet(space, user_id, &fields)? else {
            return Ok(None);
        };
        let first_line = wallet.checkpoint.entries + stream_len + log_len - log.len() as u64 + 1;
        let mut raw: RawHistory = stream.into_iter().rev().collect();
        raw.extend(number_log(&log, first_line, Some(wallet.balance)));
        let skip = raw
            .len()
            .saturating_sub(usize::try_from(newest_max).unwrap_or(usize::MAX));
        let newest = raw
            .into_iter()
            .skip(skip)
            .map(|(id, fields)| parse_history(space, user_id, id, &fields))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(HistoryWindow {
            wallet,
            retained: stream_len + log_len,
            newest,
        }))
    }
}

/// Runs a create script (`script`, keys from `keys_of`, then the wallet's fields and the
/// creation time as arguments) for every wallet on one connection, pipelined in batches of
/// [`CREATE_BATCH_LIMIT`]; the script answers 1 for a wallet it created. Returns how many.
pub(crate) fn create_in_batches(
    conn: &mut Conn,
    script: &redis::Script,
    wallets: &[&NewWallet],
    keys_of: impl Fn(&NewWallet) -> Vec<String>,
) -> Result<usize, redis::RedisError> {
    // Make sure EVALSHA will find it inside the pipeline.
    script.prepare_invoke().load(&mut conn.redis)?;
    let created_at = (now_ms() / 1000).to_string();
    let mut created = 0;
    for batch in wallets.chunks(CREATE_BATCH_LIMIT) {
        let mut pipe = redis::pipe();
        for w in batch {
            let keys = keys_of(w);
            pipe.cmd("EVALSHA")
                .arg(script.get_hash())
                .arg(keys.len())
                .arg(&keys)
                .arg(&w.user_id)
                .arg(&w.full_name)
                .arg(&w.email)
                .arg(w.opening_balance.to_string())
                .arg(w.currency.as_str())
                .arg(&created_at);
        }
        let flags: Vec<u32> = pipe.query(&mut conn.redis)?;
        created += flags.iter().filter(|f| **f == 1).count();
    }
    Ok(created)
}

/// What moved the money of a history entry: a transfer (its id and idempotency key) or a
/// deposit (its id, twice).
pub(crate) struct Mover<'a> {
    pub transfer_id: &'a str,
    pub idempotency_key: &'a str,
}

/// Appends a history entry (RPUSH of one [`format_log_entry`] line to `wallet:{id}:log`) to a
/// pipeline, inside the caller's MULTI. The time is `at_ms`, the transaction's own (the
/// outcome record's `p`). The list is named as in `space` (one Redis, or a cluster, where it is
/// in the wallet's slot).
pub(crate) fn add_history_in(
    space: KeySpace,
    pipe: &mut redis::Pipeline,
    wallet_id: &str,
    mover: &Mover<'_>,
    kind: HistoryKind,
    amount: Amount,
    at_ms: u64,
) {
    let line = format_log_entry(at_ms, mover, kind, amount);
    pipe.cmd("RPUSH").arg(space.log(wallet_id)).arg(line);
}

/// One entry of `wallet:{id}:log` (ARCHITECTURE.md, "Redis data model"): `<time><kind><amount>
/// <transfer id>[ <idempotency key>]`: the time in ms since the Unix epoch written in base 36
/// (`0-9a-z`, 8 characters until 2059 where decimal takes 13), the kind as one sign (`-`
/// debit, `+` credit, `^` deposit), the amount in cents, the key only when it is not the
/// transfer id; `mwyfzdtg-1144 tx_1` is a debit of 11.44. Ids never hold a space (their rule
/// is `[A-Za-z0-9_.:-]`). The balance after the entry is not stored: it is the wallet's
/// balance less the entries after it, which readers compute ([`number_log`]). Every byte
/// counts twice per transfer (issue 24). Pure.
pub(crate) fn format_log_entry(
    at_ms: u64,
    mover: &Mover<'_>,
    kind: HistoryKind,
    amount: Amount,
) -> String {
    let mut line = format!(
        "{}{}{} {}",
        to_base36(at_ms),
        kind.sign(),
        amount.minor(),
        mover.transfer_id
    );
    if mover.idempotency_key != mover.transfer_id {
        line.push(' ');
        line.push_str(mover.idempotency_key);
    }
    line
}

/// `n` in base 36, digits `0-9a-z`. Pure.
fn to_base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// Reads [`to_base36`]'s digits (lowercase only); `None` for anything else. Pure.
fn from_base36(text: &str) -> Option<u64> {
    let lower = text
        .bytes()
        .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase());
    (lower && !text.is_empty())
        .then(|| u64::from_str_radix(text, 36).ok())
        .flatten()
}

/// Most space-separated parts of a log line: time, kind and amount; transfer id; key.
const LOG_PARTS_MAX: usize = 3;

#[doc(hidden)]
/// A history as every reader takes it: (entry id, fields) per entry, oldest first. A stream
/// entry is its XRANGE reply (stream id `<ms>-<seq>`); a log line is turned into the compact
/// fields (`t`, `k`, `d`, `a`, and `b` when the balance is known) with the id `<ms>-v<n>`, `n`
/// its entry number (see [`number_log`]).
pub type RawHistory = Vec<(String, HashMap<String, String>)>;

#[doc(hidden)]
/// A log line as (entry id `<ms>-v<number>`, the time in decimal, and compact fields `t`, `k`,
/// `d`, `a`, without the balance), so it parses like a compact stream entry once `b` is added
/// ([`number_log`]). A line that does not read is kept whole in a field `log` (id
/// `0-v<number>`), which no reader accepts: it is reported, never guessed. Pure.
pub fn log_entry_fields(line: &str, number: u64) -> (String, HashMap<String, String>) {
    let parts: Vec<&str> = line.splitn(LOG_PARTS_MAX, ' ').collect();
    let head = parts[0];
    let sign = head.find(['-', '+', '^']).unwrap_or(head.len());
    let (time, rest) = head.split_at(sign);
    let kind = rest.chars().next().and_then(HistoryKind::from_sign);
    let amount = rest.get(1..).unwrap_or("");
    let digits = !amount.is_empty() && amount.bytes().all(|b| b.is_ascii_digit());
    let readable = digits
        && amount.parse::<i64>().is_ok()
        && parts.get(1).is_some_and(|t| !t.is_empty())
        && parts
            .get(2)
            .is_none_or(|k| !k.is_empty() && !k.contains(' '));
    let (Some(at_ms), Some(kind), true) = (from_base36(time), kind, readable) else {
        let fields = HashMap::from([("log".to_string(), line.to_string())]);
        return (format!("0-v{number}"), fields);
    };
    let fields = [
        ("t", parts[1]),
        ("k", parts.get(2).copied().unwrap_or("")),
        ("d", kind.code()),
        ("a", amount),
    ];
    let fields = fields
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    (format!("{at_ms}-v{number}"), fields)
}

#[doc(hidden)]
/// Log lines as history entries numbered from `first`, each with its balance after (`b`):
/// `balance_now` for the newest, then back one entry at a time (the newer entry's change
/// undone). The lines must be the newest of the history, so that `balance_now` follows the
/// last of them. Without a balance, or above a line that does not read, `b` is left out. Pure.
pub fn number_log(log: &[String], first: u64, balance_now: Option<Amount>) -> RawHistory {
    let mut all: RawHistory = log
        .iter()
        .enumerate()
        .map(|(i, line)| log_entry_fields(line, first + i as u64))
        .collect();
    let mut balance = balance_now.map(|b| b.minor());
    for (_, fields) in all.iter_mut().rev() {
        let Some(after) = balance else { break };
        let change = match (fields.get("d"), fields.get("a")) {
            (Some(code), Some(a)) => HistoryKind::from_code(code)
                .zip(a.parse::<i64>().ok())
                .map(|(kind, a)| kind.signed(Amount::from_minor(a)).minor()),
            _ => None,
        };
        let Some(change) = change else { break };
        fields.insert("b".to_string(), after.to_string());
        balance = after.checked_sub(change);
    }
    all
}

#[doc(hidden)]
/// A wallet's whole history from its two keys, oldest first: the entries of the older stream
/// (`stream`), then the log lines (`log`), numbered on from `trimmed` (the checkpoint's `hc`),
/// their balances from `balance_now` (see [`number_log`]). Pure.
pub fn combine_history(
    stream: RawHistory,
    log: &[String],
    trimmed: u64,
    balance_now: Option<Amount>,
) -> RawHistory {
    let first = trimmed + stream.len() as u64 + 1;
    let mut all = stream;
    all.extend(number_log(log, first, balance_now));
    all
}

#[doc(hidden)]
/// Parses one history entry in either format: the compact one (field `d`) or the original
/// long one (`transfer_id`, `idempotency_key` when recorded, `kind`, `amount`,
/// `balance_after`, `at`). Errors name the field.
pub fn parse_history_fields(
    stream_id: &str,
    f: &HashMap<String, String>,
) -> Result<HistoryEntry, String> {
    let field = |name: &str| f.get(name).ok_or_else(|| format!("missing field {name}"));
    if let Some(line) = f.get("log") {
        return Err(format!("unreadable log line {line:?}"));
    }
    if let Some(code) = f.get("d") {
        let kind = HistoryKind::from_code(code).ok_or_else(|| format!("unknown kind {code:?}"))?;
        let cents = |name: &str| {
            field(name)?
                .parse::<i64>()
                .map(Amount::from_minor)
                .map_err(|e| format!("{name}: {e}"))
        };
        let transfer_id = field("t")?.clone();
        let key = f.get("k").filter(|k| !k.is_empty()).unwrap_or(&transfer_id);
        return Ok(HistoryEntry {
            idempotency_key: Some(key.clone()),
            kind,
            amount: cents("a")?,
            balance_after: cents("b")?,
            at_ms: stream_id_ms(stream_id),
            stream_id: stream_id.to_string(),
            transfer_id,
        });
    }
    let kind = match field("kind")?.as_str() {
        "debit" => HistoryKind::Debit,
        "credit" => HistoryKind::Credit,
        "deposit" => HistoryKind::Deposit,
        other => return Err(format!("unknown kind {other:?}")),
    };
    let amount = |name: &str| Amount::parse(field(name)?).map_err(|e| format!("{name}: {e}"));
    Ok(HistoryEntry {
        transfer_id: field("transfer_id")?.clone(),
        idempotency_key: f.get("idempotency_key").cloned(),
        kind,
        amount: amount("amount")?,
        balance_after: amount("balance_after")?,
        at_ms: field("at")?.parse().unwrap_or(0),
        stream_id: stream_id.to_string(),
    })
}

/// The milliseconds part of a stream id (`<ms>-<seq>`); 0 when it has none.
fn stream_id_ms(stream_id: &str) -> u64 {
    stream_id
        .split('-')
        .next()
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(0)
}

/// Parses one entry of `user_id`'s history, read as [`RawHistory`]; an error names the key
/// it is in (the log for ids `<ms>-v<n>`, the older stream otherwise) and its id.
fn parse_history(
    space: KeySpace,
    user_id: &str,
    id: String,
    f: &HashMap<String, String>,
) -> Result<HistoryEntry, WalletError> {
    parse_history_fields(&id, f).map_err(|detail| {
        let key = if id.contains("-v") {
            space.log(user_id)
        } else {
            space.history(user_id)
        };
        WalletError::Corrupt {
            key: format!("{key} {id}"),
            detail,
        }
    })
}

/// Reads and parses the wallet's hash, named as in `space`; `None` when the key does not
/// exist.
pub(crate) fn read_wallet_in(
    space: KeySpace,
    conn: &mut Conn,
    user_id: &str,
) -> Result<Option<Wallet>, WalletError> {
    let fields: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(space.wallet(user_id))
        .query(&mut conn.redis)?;
    parse_wallet(space, user_id, &fields)
}

/// Parses a wallet's hash as read by HGETALL; an empty hash is a missing wallet. An error
/// names the key as `space` spells it, the one an operator looks up.
pub(crate) fn parse_wallet(
    space: KeySpace,
    user_id: &str,
    f: &HashMap<String, String>,
) -> Result<Option<Wallet>, WalletError> {
    if f.is_empty() {
        return Ok(None);
    }
    let key = space.wallet(user_id);
    let corrupt = |detail: String| WalletError::Corrupt {
        key: key.clone(),
        detail,
    };
    let field = |name: &str| {
        f.get(name)
            .cloned()
            .ok_or_else(|| corrupt(format!("missing field {name}")))
    };
    let amount = |name: &str| {
        let text = field(name)?;
        Amount::parse(&text).map_err(|e| corrupt(format!("{name} {text:?}: {e}")))
    };
    let balance = amount("balance")?;
    let wallet = Wallet {
        wallet_id: f
            .get("wallet_id")
            .cloned()
            .unwrap_or_else(|| user_id.to_string()),
        user_id: f
            .get("user_id")
            .cloned()
            .unwrap_or_else(|| user_id.to_string()),
        opening_balance: match f.get("opening_balance") {
            Some(_) => amount("opening_balance")?,
            // The original system did not keep it; its wallets start their history here.
            None => balance,
        },
        balance,
        currency: field("currency")?
            .parse()
            .map_err(|e: crate::engine::money::CurrencyError| corrupt(format!("currency: {e}")))?,
        status: WalletStatus::parse(&field("status")?)
            .ok_or_else(|| corrupt(format!("unknown status {:?}", f.get("status"))))?,
        created_at: f.get("created_at").cloned().unwrap_or_default(),
        version: match f.get("version") {
            None => 0,
            Some(v) => v
                .parse()
                .map_err(|_| corrupt(format!("version {v:?} is not a whole number")))?,
        },
        checkpoint: Checkpoint::from_fields(f).map_err(corrupt)?,
    };
    Ok(Some(wallet))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_wallet_that_does_not_read_is_named_by_its_key_on_each_topology() {
        let bad = fields(&[("balance", "not money")]);
        for (space, key) in [
            (KeySpace::Standalone, "wallet:u1"),
            (KeySpace::Cluster, "wallet:{u1}"),
        ] {
            match parse_wallet(space, "u1", &bad) {
                Err(WalletError::Corrupt { key: named, .. }) => assert_eq!(named, key),
                other => panic!("{space:?}: expected a corrupt wallet, got {other:?}"),
            }
        }
        assert!(matches!(
            parse_wallet(KeySpace::Cluster, "u1", &fields(&[])),
            Ok(None)
        ));
    }

    #[test]
    fn the_long_and_the_compact_history_formats_read_the_same() {
        let long = fields(&[
            ("transfer_id", "tx_1"),
            ("idempotency_key", "tx_1"),
            ("kind", "debit"),
            ("amount", "11.44"),
            ("balance_after", "999988.56"),
            ("at", "1795751339956"),
        ]);
        let compact = fields(&[
            ("t", "tx_1"),
            ("k", ""),
            ("d", "d"),
            ("a", "1144"),
            ("b", "99998856"),
        ]);
        let old = parse_history_fields("1795751339956-0", &long).unwrap();
        let new = parse_history_fields("1795751339956-0", &compact).unwrap();
        assert_eq!(old, new);
        assert_eq!(new.idempotency_key.as_deref(), Some("tx_1"));
        assert_eq!(new.at_ms, 1_795_751_339_956);
        // A key other than the transfer id is kept; an old entry without one has none.
        let keyed = fields(&[
            ("t", "tx_2"),
            ("k", "req_2"),
            ("d", "c"),
            ("a", "1"),
            ("b", "2"),
        ]);
        let keyed = parse_history_fields("5-1", &keyed).unwrap();
        assert_eq!(keyed.idempotency_key.as_deref(), Some("req_2"));
        assert_eq!(keyed.kind, HistoryKind::Credit);
        let mut legacy = long.clone();
        legacy.remove("idempotency_key");
        assert_eq!(
            parse_history_fields("1-0", &legacy)
                .unwrap()
                .idempotency_key,
            None
        );
        let bad = fields(&[("t", "tx"), ("k", ""), ("d", "x"), ("a", "1"), ("b", "2")]);
        assert!(parse_history_fields("1-0", &bad).is_err());
    }

    #[test]
    fn a_log_line_reads_back_as_the_entry_it_was_written_from() {
        let mover = Mover {
            transfer_id: "tx_1",
            idempotency_key: "tx_1",
        };
        let amount = Amount::from_minor(1144);
        let line = format_log_entry(1_795_751_339_956, &mover, HistoryKind::Debit, amount);
        assert_eq!(
            line, "mwyfzdtg-1144 tx_1",
            "time in base 36, the key left out"
        );
        assert_eq!(from_base36("mwyfzdtg"), Some(1_795_751_339_956));
        let history = number_log(&[line], 7, Some(Amount::from_minor(-5)));
        let (id, fields) = &history[0];
        assert_eq!(id, "1795751339956-v7");
        let e = parse_history_fields(id, fields).unwrap();
        assert_eq!(
            (e.kind, e.amount, e.balance_after, e.at_ms),
            (
                HistoryKind::Debit,
                amount,
                Amount::from_minor(-5),
                1_795_751_339_956
            )
        );
        assert_eq!(e.idempotency_key.as_deref(), Some("tx_1"));
        let keyed = Mover {
            transfer_id: "tx_2",
            idempotency_key: "req:2",
        };
        let line = format_log_entry(5, &keyed, HistoryKind::Deposit, amount);
        assert_eq!(line, "5^1144 tx_2 req:2");
        let (id, mut fields) = log_entry_fields(&line, 1);
        fields.insert("b".into(), "0".into());
        let e = parse_history_fields(&id, &fields).unwrap();
        assert_eq!(e.transfer_id, "tx_2");
        assert_eq!(e.idempotency_key.as_deref(), Some("req:2"));
        for bad in [
            "",
            "5x1 t",
            "5-1.00 t",
            "5-1",
            "X-1 t",
            "5-1 t k extra",
            "5--1 t",
            "-1 t",
            "5- t",
        ] {
            let (id, fields) = log_entry_fields(bad, 3);
            assert_eq!(id, "0-v3", "{bad:?}");
            assert!(parse_history_fields(&id, &fields).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn balances_are_read_back_from_the_wallets_and_stop_at_a_line_that_does_not_read() {
        let log = ["1^500 a", "2-200 b", "bad", "4+50 c"].map(String::from);
        let history = number_log(&log, 1, Some(Amount::from_minor(350)));
        let b = |i: usize| history[i].1.get("b").map(String::as_str);
        assert_eq!((b(3), b(2), b(1), b(0)), (Some("350"), None, None, None));
        let good = number_log(&log[..2], 1, Some(Amount::from_minor(300)));
        let b = |i: usize| good[i].1.get("b").map(String::as_str);
        assert_eq!((b(0), b(1)), (Some("500"), Some("300")));
        assert!(!number_log(&log[..1], 1, None)[0].1.contains_key("b"));
    }

    #[test]
    fn a_history_is_the_streams_entries_then_the_logs_numbered_on() {
        let stream = vec![(
            "10-0".to_string(),
            fields(&[("t", "a"), ("k", ""), ("d", "p"), ("a", "1"), ("b", "1")]),
        )];
        let log = ["k+2 b".to_string()];
        let all = combine_history(stream, &log, 4, Some(Amount::from_minor(3)));
        let ids: Vec<&str> = all.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(
            ids,
            ["10-0", "20-v6"],
            "hc 4, one stream entry: the line is entry 6"
        );
        assert_eq!(all[1].1["b"], "3");
    }
}
