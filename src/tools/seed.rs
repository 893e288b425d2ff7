//! Demo and test data: `user_1..user_N` with random opening balances, and the reset that wipes
//! the whole data model first.
//!
//! Owns the shape of seeded users (name, email, balance range) and the key patterns a reset
//! deletes. Creating a wallet goes through [`WalletService::create_wallets`], so seeding never
//! overwrites an existing wallet: running it twice creates nothing the second time. On a
//! Redis Cluster the wallets land on their slots' primaries and a reset scans every primary.
//! Does not: change existing wallets, or run while workers do (a reset deletes their locks).

use rand::{RngExt, SeedableRng};

use crate::engine::money::{Amount, Currency};
use crate::engine::service::WalletService;
use crate::engine::store::{self, Conn};
use crate::engine::wallet::{NewWallet, WalletError};

/// Most users one seed run may create.
pub const SEED_USERS_MAX: u32 = 1_000_000;
#[doc(hidden)]
/// Smallest random opening balance, in cents (100.00).
pub const OPENING_CENTS_MIN: i64 = 10_000;
#[doc(hidden)]
/// Largest random opening balance, in cents (10000.00).
pub const OPENING_CENTS_MAX: i64 = 1_000_000;
/// Wallets handed to one `create_wallets` call; bounds memory for large seeds.
const CREATE_CHUNK: u32 = 10_000;

/// What one seed run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedReport {
    /// Users asked for.
    pub users: u32,
    /// Wallets created now.
    pub created: u64,
    /// Wallets that already existed and were left untouched.
    pub skipped: u64,
    /// Keys deleted by the reset; `None` when no reset was asked for.
    pub deleted: Option<u64>,
}

impl std::fmt::Display for SeedReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seeded {} users: {} created, {} skipped",
            self.users, self.created, self.skipped
        )?;
        if let Some(deleted) = self.deleted {
            write!(f, " (reset deleted {deleted} keys first)")?;
        }
        Ok(())
    }
}

/// Why seeding failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SeedError {
    /// The number of users is out of range.
    #[error("users must be between 1 and {SEED_USERS_MAX}, got {0}")]
    Users(u32),
    /// Creating a wallet failed.
    #[error(transparent)]
    Wallet(#[from] WalletError),
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// No pooled connection in time.
    #[error("redis pool: {0}")]
    Pool(#[from] r2d2::Error),
    /// A Redis Cluster primary could not be reached.
    #[error(transparent)]
    Cluster(#[from] crate::engine::cluster::ClusterError),
}

#[doc(hidden)]
/// The user id of seeded user number `n` (1-based).
pub fn user_id(n: u32) -> String {
    format!("user_{n}")
}

#[doc(hidden)]
/// Seeded user number `n` with the given opening balance.
pub fn seeded_wallet(n: u32, opening_cents: i64) -> NewWallet {
    NewWallet {
        user_id: user_id(n),
        full_name: format!("User {n}"),
        email: format!("user_{n}@example.com"),
        opening_balance: Amount::from_minor(opening_cents),
        currency: Currency::USD,
    }
}

#[doc(hidden)]
/// A random opening balance in whole cents, 100.00 to 10000.00 inclusive.
pub fn random_opening_cents<R: rand::Rng + ?Sized>(rng: &mut R) -> i64 {
    rng.random_range(OPENING_CENTS_MIN..=OPENING_CENTS_MAX)
}

/// Creates `user_1..user_{users}` (existing wallets are skipped, never changed). With `reset`,
/// first deletes every key of the data model in this Redis database. `rng_seed` makes the
/// opening balances reproducible.
pub fn seed(
    service: &WalletService,
    users: u32,
    reset: bool,
    rng_seed: Option<u64>,
) -> Result<SeedReport, SeedError> {
    seed_with_progress(service, users, reset, rng_seed, |_| {})
}

/// [`seed`], calling `progress(users_done)` after each batch.
pub fn seed_with_progress(
    service: &WalletService,
    users: u32,
    reset: bool,
    rng_seed: Option<u64>,
    mut progress: impl FnMut(u32),
) -> Result<SeedReport, SeedError> {
    if !(1..=SEED_USERS_MAX).contains(&users) {
        return Err(SeedError::Users(users));
    }
    let deleted = if reset {
        Some(reset_data_model(service)?)
    } else {
        None
    };
    let mut rng = match rng_seed {
        Some(s) => rand::rngs::StdRng::seed_from_u64(s),
        None => rand::rngs::StdRng::from_rng(&mut rand::rng()),
    };
    let mut created = 0u64;
    let mut start = 1u32;
    while start <= users {
        let end = start.saturating_add(CREATE_CHUNK - 1).min(users);
        let batch: Vec<NewWallet> = (start..=end)
            .map(|n| seeded_wallet(n, random_opening_cents(&mut rng)))
            .collect();
        created += service.create_wallets(&batch)? as u64;
        progress(end);
        if end == users {
            break;
        }
        start = end + 1;
    }
    Ok(SeedReport {
        users,
        created,
        skipped: u64::from(users) - created,
        deleted,
    })
}

/// Deletes every key of the data model (`user:*`, `wallet:*` with the histories,
/// `transfer:*`, `lock:*`; on a cluster also the credit markers and the keys' claims; the
/// index sets `users:all`, `wallets:all` where the key space has them) with SCAN + UNLINK on
/// every shard of the topology (`KeySpace::data_model_patterns`), so Redis never blocks on
/// a KEYS over a large database; one key per UNLINK, pipelined (keys of one SCAN batch may sit
/// in different slots). Returns how many keys were deleted.
///
/// Destructive, and unsafe while workers run: it deletes their locks too.
///
pub fn reset_data_model(service: &WalletService) -> Result<u64, SeedError> {
    let topology = service.topology();
    let space = topology.key_space();
    let mut deleted = 0;
    for shard in topology.shards() {
        let mut conn = topology.conn_for_shard::<SeedError>(&shard)?;
        for pattern in space.data_model_patterns() {
            deleted += unlink_each_matching(&mut conn, pattern)?;
        }
        for set in space.wallet_index_sets() {
            deleted += redis::cmd("UNLINK")
                .arg(*set)
                .query::<u64>(&mut conn.redis)?;
        }
    }
    Ok(deleted)
}

/// UNLINKs every key matching `pattern` one by one (pipelined per SCAN step, COUNT
/// [`store::SCAN_COUNT`]): keys of one SCAN batch may sit in different slots of a cluster
/// node. Returns how many keys were deleted.
pub(crate) fn unlink_each_matching(conn: &mut Conn, pattern: &str) -> redis::RedisResult<u64> {
    let mut deleted = 0;
    store::scan_each(conn, None, pattern, None, |conn, batch| {
        let mut pipe = redis::pipe();
        for key in &batch {
            pipe.cmd("UNLINK").arg(key);
        }
        let counts: Vec<u64> = pipe.query(&mut conn.redis)?;
        deleted += counts.iter().sum::<u64>();
        Ok::<_, redis::RedisError>(())
    })?;
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::keyspace::KeySpace;
    use crate::engine::store::keys;

    #[test]
    fn seeded_user_shape() {
        let w = seeded_wallet(17, 523_450);
        assert_eq!(w.user_id, "user_17");
        assert_eq!(w.full_name, "User 17");
        assert_eq!(w.email, "user_17@example.com");
        assert_eq!(w.currency, Currency::USD);
        assert_eq!(w.opening_balance.to_string(), "5234.50");
        crate::engine::message::check_user_id("user_id", &user_id(SEED_USERS_MAX)).unwrap();
    }

    #[test]
    fn opening_balances_stay_in_range_and_are_reproducible() {
        let mut a = rand::rngs::StdRng::seed_from_u64(7);
        let mut b = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..10_000 {
            let cents = random_opening_cents(&mut a);
            assert!((OPENING_CENTS_MIN..=OPENING_CENTS_MAX).contains(&cents));
            assert_eq!(cents, random_opening_cents(&mut b));
        }
    }

    #[test]
    fn report_reads_as_one_line() {
        let mut r = SeedReport {
            users: 100,
            created: 100,
            skipped: 0,
            deleted: None,
        };
        assert_eq!(r.to_string(), "seeded 100 users: 100 created, 0 skipped");
        r.deleted = Some(205);
        assert_eq!(
            r.to_string(),
            "seeded 100 users: 100 created, 0 skipped (reset deleted 205 keys first)"
        );
    }

    #[test]
    fn patterns_cover_the_data_model() {
        let matches = |key: &str| {
            KeySpace::Standalone
                .data_model_patterns()
                .iter()
                .any(|p| key.starts_with(p.trim_end_matches('*')))
        };
        for key in [
            keys::user("u"),
            keys::wallet("u"),
            keys::history("u"),
            keys::lock("u"),
            keys::outcome("k"),
        ] {
            assert!(matches(&key), "{key} not covered");
        }
    }
}
