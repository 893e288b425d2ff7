//! What a run sends: its wallets' ids (`<mode>_<6 hex>_<i>`, chosen for the pairs asked:
//! [`run_ids`], [`same_slot_ids`]), the pairs its transfers are drawn from ([`Pairs`]), its
//! requests (a random amount up to [`BENCH_AMOUNT_CENTS_MAX`]), and the run that holds them
//! from the wallets' creation to the closing balance check.
//!
//! Owns the run's prefix and ids and how a request is drawn (pure but for the random numbers).
//! Does not write Redis itself (creating, summing and deleting the wallets is `setup`'s), and
//! sends nothing (`direct`, `e2e`).

use std::time::Instant;

use rand::RngExt;

use crate::engine::cluster::{self, SLOT_COUNT};
use crate::engine::message::{FieldError, TransferRequest};
use crate::engine::money::{Amount, Currency};
use crate::engine::service::WalletService;
use crate::tools::bench::error::BenchError;
use crate::tools::bench::figures::BalanceCheck;
use crate::tools::bench::setup::{BalanceSum, cleanup, create_bench_wallets, sum_balances};

/// Largest amount one bench transfer moves, in cents (100.00). The smallest is 0.01.
pub const BENCH_AMOUNT_CENTS_MAX: i64 = 10_000;

/// Which sender/receiver pairs a direct run draws its transfers from. On a Redis Cluster the
/// engine takes the one-transaction path when both wallets hash to one slot and the
/// cross-slot steps otherwise (`engine::cluster_transfer`); `SameSlot` and `CrossSlot`
/// measure the two paths apart. On one Redis every transfer is one transaction whatever the
/// pairs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Pairs {
    /// Uniform random distinct pairs among ids `<run>_<i>`: two random ids share a slot with
    /// probability 1/16384, so on a cluster nearly every transfer is cross-slot, whatever
    /// the number of primaries.
    #[default]
    Random,
    /// Pairs of ids that hash to the same slot, found without hash tags: candidate ids
    /// `<run>_<i>` are bucketed by slot and two candidates of one slot make a pair
    /// (see [`same_slot_ids`]). Transfers go either way within a random pair.
    SameSlot,
    /// Uniform random distinct pairs whose ids hash to different slots (a pair drawn in one
    /// slot is drawn again).
    CrossSlot,
}

impl Pairs {
    /// `random`, `same-slot` or `cross-slot`, as the `--pairs` flag spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Pairs::Random => "random",
            Pairs::SameSlot => "same-slot",
            Pairs::CrossSlot => "cross-slot",
        }
    }

    /// How the mode row of the report names the pairs.
    pub(super) fn describe(self) -> &'static str {
        match self {
            Pairs::Random => "uniform random pairs",
            Pairs::SameSlot => "same-slot pairs",
            Pairs::CrossSlot => "cross-slot pairs",
        }
    }
}

/// The wallets of one run, created fresh under a unique prefix, and their balance sum before.
pub(super) struct Run {
    /// The prefix, `{mode}_<6 hex>`.
    pub(super) name: String,
    pub(super) ids: Vec<String>,
    pub(super) pairs: Pairs,
    pub(super) before: BalanceSum,
    pub(super) created_at: Instant,
}

/// What a run ends with: the balance check, and the keys deleted when cleanup was asked for.
pub(super) struct RunEnd {
    pub(super) name: String,
    pub(super) balance: BalanceCheck,
    pub(super) cleaned_keys: Option<u64>,
}

impl Run {
    /// Creates `wallets` wallets `{mode}_<6 hex>_<i>` (which `i`: see [`run_ids`]); fails if
    /// any of them already existed.
    pub(super) fn create(
        service: &WalletService,
        mode: &str,
        wallets: u32,
        pairs: Pairs,
    ) -> Result<Run, BenchError> {
        let name = format!("{mode}_{:06x}", rand::rng().random_range(0..0x100_0000u32));
        let ids = run_ids(&name, wallets, pairs);
        let created_at = Instant::now();
        log::info!("{name}: creating {} wallets", ids.len());
        let created = create_bench_wallets(service, &ids)?;
        if created != ids.len() {
            return Err(BenchError::Setup(format!(
                "{} of {} wallets with prefix {name} already existed; run again for a fresh prefix",
                ids.len() - created,
                ids.len()
            )));
        }
        let before = sum_balances(service, &ids)?;
        Ok(Run {
            name,
            ids,
            pairs,
            before,
            created_at,
        })
    }

    /// The transfer ids of this run are `{name}_t{n}`.
    pub(super) fn transfer_prefix(&self) -> String {
        format!("{}_t", self.name)
    }

    /// Request `n` of this run: the hot pair or a random distinct pair, a random amount.
    pub(super) fn request(
        &self,
        rng: &mut impl rand::Rng,
        n: u64,
        hot: bool,
    ) -> Result<TransferRequest, FieldError> {
        let (from, to) = pick_pair(rng, &self.ids, hot, self.pairs);
        let amount = Amount::from_minor(rng.random_range(1..=BENCH_AMOUNT_CENTS_MAX));
        TransferRequest::new(
            &format!("{}{n}", self.transfer_prefix()),
            &self.ids[from],
            &self.ids[to],
            &amount.to_string(),
            Currency::USD,
        )
    }

    /// Sums the balances again and deletes the run's keys when `cleanup` is set.
    pub(super) fn end(self, service: &WalletService, cleanup: bool) -> Result<RunEnd, BenchError> {
        let after = sum_balances(service, &self.ids)?;
        let balance = BalanceCheck {
            wallets: self.ids.len() as u32,
            before: self.before.sum,
            after: after.sum,
            negative: after.negative,
        };
        let cleaned_keys = if cleanup {
            Some(self::cleanup(service, &self.name, &self.ids)?)
        } else {
            None
        };
        Ok(RunEnd {
            name: self.name,
            balance,
            cleaned_keys,
        })
    }
}

/// Draws of a cross-slot pair before falling back to the first two wallets (which
/// [`run_ids`] puts in different slots).
const CROSS_SLOT_DRAWS_LIMIT: u32 = 1_000;

/// The wallet indexes of one transfer: the hot pair (the first two wallets), or a pair of the
/// kind `pairs` asks for among `ids` (built by [`run_ids`] for the same `pairs`).
fn pick_pair(rng: &mut impl rand::Rng, ids: &[String], hot: bool, pairs: Pairs) -> (usize, usize) {
    if hot {
        return (0, 1);
    }
    match pairs {
        Pairs::Random => uniform_pair(rng, ids.len()),
        Pairs::SameSlot => {
            let k = rng.random_range(0..ids.len() / 2);
            if rng.random_bool(0.5) {
                (2 * k, 2 * k + 1)
            } else {
                (2 * k + 1, 2 * k)
            }
        }
        Pairs::CrossSlot => {
            let slot = |i: usize| cluster::keys::wallet_slot(&ids[i]);
            (0..CROSS_SLOT_DRAWS_LIMIT)
                .map(|_| uniform_pair(rng, ids.len()))
                .find(|&(from, to)| slot(from) != slot(to))
                .unwrap_or((0, 1))
        }
    }
}

/// A uniform random pair of distinct indexes below `wallets` (at least 2).
fn uniform_pair(rng: &mut impl rand::Rng, wallets: usize) -> (usize, usize) {
    let from = rng.random_range(0..wallets);
    let to = rng.random_range(0..wallets - 1);
    (from, if to >= from { to + 1 } else { to })
}

/// The `wallets` ids of run `name` (at least 2) for `pairs`. `Random`: `<name>_<i>` for `i`
/// below `wallets`. `SameSlot`: the pairs of [`same_slot_ids`], `ids[2k]` and `ids[2k + 1]`
/// in one slot; an odd count ends with a lone wallet that no transfer draws. `CrossSlot`:
/// `<name>_<i>` in order, skipping the candidates for the second id that share the first
/// one's slot, so that the first two wallets (the hot pair, the fallback of
/// `pick_pair`) are in different slots. Pure and deterministic.
pub fn run_ids(name: &str, wallets: u32, pairs: Pairs) -> Vec<String> {
    let n = wallets as usize;
    match pairs {
        Pairs::Random => (0..n).map(|i| format!("{name}_{i}")).collect(),
        Pairs::SameSlot => {
            let (mut ids, next) = same_slot_ids(name, n / 2);
            if n % 2 == 1 {
                ids.push(format!("{name}_{next}"));
            }
            ids
        }
        Pairs::CrossSlot => {
            let slot = cluster::keys::wallet_slot(&format!("{name}_0"));
            let mut ids = Vec::with_capacity(n);
            // Candidates 0, 1, 2, ...; while only the first is taken, those in its slot are
            // skipped (1 in 16384 is; the loop ends because some candidate's slot differs).
            for id in (0u64..).map(|i| format!("{name}_{i}")) {
                if ids.len() == n {
                    break;
                }
                if ids.len() != 1 || cluster::keys::wallet_slot(&id) != slot {
                    ids.push(id);
                }
            }
            ids
        }
    }
}

/// `pairs` pairs of ids of run `name` that hash to the same slot, without hash tags: the
/// candidates `<name>_<i>`, `i` = 0, 1, 2, ..., are bucketed by slot, and a candidate whose
/// slot already holds a waiting one makes a pair with it (`ids[2k]`, `ids[2k + 1]`). At
/// most 16,384 candidates wait at once, so `2 * pairs + 16384` candidates always suffice
/// (about `sqrt(2 * 16384 * pairs)` for few pairs). Returns the ids and the first candidate
/// number not looked at. Pure and deterministic.
pub fn same_slot_ids(name: &str, pairs: usize) -> (Vec<String>, u64) {
    let mut waiting: Vec<Option<String>> = vec![None; usize::from(SLOT_COUNT)];
    let mut ids = Vec::with_capacity(pairs * 2);
    let mut next = 0u64;
    while ids.len() < pairs * 2 {
        let id = format!("{name}_{next}");
        next += 1;
        let slot = usize::from(cluster::keys::wallet_slot(&id));
        match waiting[slot].take() {
            Some(first) => ids.extend([first, id]),
            None => waiting[slot] = Some(id),
        }
    }
    (ids, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_slot_ids_pair_up_in_one_slot_and_cross_slot_ids_start_apart() {
        let slot = cluster::keys::wallet_slot;
        let (ids, next) = same_slot_ids("bench_abcdef", 50);
        assert_eq!(ids.len(), 100);
        assert!(next <= 2 * 50 + u64::from(SLOT_COUNT), "{next}");
        for pair in ids.chunks(2) {
            assert_eq!(slot(&pair[0]), slot(&pair[1]), "{pair:?}");
        }
        let unique: std::collections::BTreeSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
        let odd = run_ids("bench_abcdef", 7, Pairs::SameSlot);
        assert_eq!(odd.len(), 7);
        assert_eq!(odd[..6], ids[..6]);
        assert_eq!(
            odd[6],
            format!("bench_abcdef_{}", same_slot_ids("bench_abcdef", 3).1)
        );
        assert_eq!(
            run_ids("r", 3, Pairs::Random),
            ["r_0", "r_1", "r_2"].map(String::from)
        );
        for name in ["a", "b", "bench_000001", "bench_ffffff"] {
            let ids = run_ids(name, 5, Pairs::CrossSlot);
            assert_eq!(ids.len(), 5);
            assert_ne!(slot(&ids[0]), slot(&ids[1]), "{ids:?}");
        }
    }

    #[test]
    fn pairs_are_drawn_as_asked() {
        let slot = cluster::keys::wallet_slot;
        let mut rng = rand::rng();
        for pairs in [Pairs::Random, Pairs::SameSlot, Pairs::CrossSlot] {
            let ids = run_ids("bench_123456", 41, pairs);
            assert_eq!(pick_pair(&mut rng, &ids, true, pairs), (0, 1));
            for _ in 0..2_000 {
                let (from, to) = pick_pair(&mut rng, &ids, false, pairs);
                assert!(from != to && from < ids.len() && to < ids.len());
                match pairs {
                    Pairs::Random => {}
                    Pairs::SameSlot => {
                        assert_eq!(from / 2, to / 2);
                        assert!(from < 40, "the lone wallet is never drawn");
                    }
                    Pairs::CrossSlot => assert_ne!(slot(&ids[from]), slot(&ids[to])),
                }
            }
        }
    }
}
