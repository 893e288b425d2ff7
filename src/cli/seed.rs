//! `wallet seed`: creates the demo users `user_1..user_N`, optionally after wiping the data
//! model, with a progress bar on a terminal.
//!
//! Owns the seed flags (the `--users` bound is the library's [`seed::SEED_USERS_MAX`]), the
//! `--reset` warning and the progress bar. Does not own what a seeded user looks like, its
//! opening balance range, or what a reset deletes (`tools::seed`).

use std::io::IsTerminal;

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use wallet_transfer::engine::store::redact_url;
use wallet_transfer::tools::seed;

use crate::cli::{Failure, GlobalOpts, print_out};

#[derive(Debug, Args)]
#[command(
    after_help = "Existing wallets are never changed: seeding twice creates nothing the second \
                  time. With --redis-cluster each wallet is written on its slot's primary, and \
                  --reset scans every primary (credit markers included).\n\
                  Example: wallet seed --users 100 --reset"
)]
pub struct SeedArgs {
    /// Number of users to create, user_1..user_N (1 to 1000000)
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=i64::from(seed::SEED_USERS_MAX)))]
    pub users: u32,

    /// First delete EVERY key of the wallet data model in this Redis database (users,
    /// wallets, histories, transfer records, locks); never while workers are running
    #[arg(long)]
    pub reset: bool,

    /// Seed for the random opening balances, for a reproducible data set [default: random]
    #[arg(long, value_name = "SEED")]
    pub rng_seed: Option<u64>,
}

/// Seeds the users and prints what was created.
pub fn run(global: &GlobalOpts, args: SeedArgs) -> Result<(), Failure> {
    let service = global.connect(1)?;
    if args.reset {
        let place = match &global.redis_cluster {
            Some(seeds) => format!("the Redis Cluster of {}", seeds.0.join(",")),
            None => redact_url(&global.redis_url),
        };
        log::warn!("--reset: deleting every wallet, user, transfer record and lock in {place}");
    }
    let bar = progress_bar(u64::from(args.users));
    let report =
        seed::seed_with_progress(&service, args.users, args.reset, args.rng_seed, |done| {
            bar.set_position(u64::from(done))
        });
    bar.finish_and_clear();
    print_out(&format!("{}\n", report?))
}

/// A bar of `total` users on stderr when it is a terminal, else a hidden one.
fn progress_bar(total: u64) -> ProgressBar {
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    if let Ok(style) =
        ProgressStyle::with_template("{elapsed_precise} [{wide_bar}] {pos}/{len} users")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

#[cfg(test)]
mod tests {
    use wallet_transfer::Amount;
    use wallet_transfer::tools::seed::{OPENING_CENTS_MAX, OPENING_CENTS_MIN, SEED_USERS_MAX};

    use crate::cli::{Command, flag_help, parse, subcommand_help};

    #[test]
    fn users_is_bounded_by_the_library_limit() {
        let max = SEED_USERS_MAX.to_string();
        let Command::Seed(args) = parse(&["seed", "--users", &max]).unwrap().command else {
            panic!("not seed");
        };
        assert_eq!(args.users, SEED_USERS_MAX);
        assert!(!args.reset);
        assert_eq!(args.rng_seed, None);
        let over = (SEED_USERS_MAX + 1).to_string();
        assert!(parse(&["seed", "--users", &over]).is_err());
        assert!(parse(&["seed", "--users", "0"]).is_err());
        assert!(parse(&["seed"]).is_err(), "--users is required");
    }

    #[test]
    fn help_states_the_library_limits() {
        let help = flag_help("seed", "users");
        assert!(help.contains(&format!("1 to {SEED_USERS_MAX}")), "{help}");
        // The summary in `wallet --help` names the opening balance range of tools::seed.
        let (about, _) = subcommand_help("seed");
        let range = format!(
            "{} to {}",
            Amount::from_minor(OPENING_CENTS_MIN),
            Amount::from_minor(OPENING_CENTS_MAX)
        );
        assert!(about.contains(&range), "{about} should say {range}");
    }
}
