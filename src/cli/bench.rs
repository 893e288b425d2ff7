//! `wallet bench`: runs the load generator in one of its two modes, `--direct` (in-process
//! engine calls) or `--e2e` (through Kafka and a running worker), and prints its report.
//!
//! Owns the bench flags (their defaults come from [`DirectConfig::default`] and
//! [`E2eConfig::default`], their bounds from the library's `BENCH_*` limits), the choice of
//! mode and the table or JSON output. Does not own the runs, the report's figures or the
//! balance check (`tools::bench`).

use std::io::IsTerminal;
use std::time::Duration;

use clap::builder::RangedI64ValueParser;
use clap::{ArgGroup, Args, ValueEnum};
use wallet_transfer::tools::bench::{self, DirectConfig, E2eConfig, Pairs};
use wallet_transfer::worker::kafka::KafkaConfig;

use crate::cli::{Failure, GlobalOpts, flag_error, print_out};

fn direct() -> DirectConfig {
    DirectConfig::default()
}

fn e2e() -> E2eConfig {
    E2eConfig::default()
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("mode").required(true).args(["direct", "e2e"])))]
#[command(
    after_help = "The run creates its own wallets (bench_<6 hex>_<i>, 1000000.00 each), so it \
                  never touches other data, and checks at the end that the sum of their \
                  balances did not change (exit 1 if it did). --direct also reports what the \
                  run left in Redis: its outcome records (and how many expire), the history \
                  entries its wallets keep and those trimmed into checkpoints, and used_memory \
                  before and after (bytes kept per transfer).\n\
                  On a Redis Cluster (--redis-cluster) Redis's figures are summed over every \
                  primary and also given per primary (commands, cpu), and the transfers are \
                  split by path: same-slot (one transaction) and cross-slot (the steps); \
                  --pairs same-slot or cross-slot measures one path alone (--direct). With \
                  --e2e the worker must run on the same cluster; the primaries' figures are \
                  then the worker's, and the engine's (round trips) are not measured.\n\
                  Example: wallet bench --direct --threads 8 --transfers 50000"
)]
pub struct BenchArgs {
    /// Mode: call the transfer engine in-process from --threads threads (no Kafka)
    #[arg(long)]
    pub direct: bool,

    /// Mode: publish the requests (keyed by from_user) to a running worker through Kafka
    /// (--brokers), wait for their results; throughput and publish-to-result latency
    #[arg(long)]
    pub e2e: bool,

    /// Topic the worker reads requests from (--e2e only)
    #[arg(long, env = "TOPIC_REQUESTS", value_name = "TOPIC",
          default_value_t = e2e().requests_topic)]
    pub requests_topic: String,

    /// Topic the worker publishes results to (--e2e only)
    #[arg(long, env = "TOPIC_RESULTS", value_name = "TOPIC",
          default_value_t = e2e().results_topic)]
    pub results_topic: String,

    /// How long to wait for all results, from the first publish, in seconds; exit 1 after
    /// (--e2e only; 1 to 86400)
    #[arg(long, value_name = "S", default_value_t = e2e().timeout.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub timeout_s: u64,

    /// Publish at most this many requests per second, to measure latency without the queueing
    /// of one big burst (--e2e only; 1 to 1000000) [default: all at once]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub rate: Option<u32>,

    /// Threads running transfers at once; the Redis pool gets as many connections (1 to 256;
    /// --direct only)
    #[arg(long, value_name = "N", default_value_t = direct().threads,
          value_parser = RangedI64ValueParser::<usize>::new()
              .range(1..=bench::BENCH_THREADS_LIMIT as i64))]
    pub threads: usize,

    /// Transfers in total, shared among the threads (1 to 10000000)
    #[arg(long, value_name = "N", default_value_t = direct().transfers,
          value_parser = clap::value_parser!(u64).range(1..=bench::BENCH_TRANSFERS_LIMIT))]
    pub transfers: u64,

    /// Wallets the run creates and picks uniform random distinct pairs from (2 to 1000000)
    #[arg(long, value_name = "N", default_value_t = direct().wallets,
          value_parser = clap::value_parser!(u32).range(
              i64::from(bench::BENCH_WALLETS_MIN)..=i64::from(bench::BENCH_WALLETS_LIMIT)))]
    pub wallets: u32,

    /// Put every transfer on one pair of wallets (first -> second): maximum contention
    #[arg(long)]
    pub hot: bool,

    /// Which sender/receiver pairs: random; same-slot (ids that hash to one slot: the
    /// one-transaction path on a cluster); cross-slot (ids in different slots: the steps)
    /// (--direct only)
    #[arg(long, value_name = "KIND", value_enum, default_value_t = PairsArg::Random)]
    pub pairs: PairsArg,

    /// Retries of a request after a transient error (lock timeout, lost lock, WATCH conflicts,
    /// Redis or pool error), same request and idempotency key (0 to 100; --direct only)
    #[arg(long, value_name = "N", default_value_t = direct().transient_retries,
          value_parser = clap::value_parser!(u32).range(
              0..=i64::from(bench::BENCH_TRANSIENT_RETRIES_LIMIT)))]
    pub transient_retries: u32,

    /// Delete the run's wallets, users, histories and transfer records afterwards
    #[arg(long)]
    pub cleanup: bool,

    /// Print the figures as one JSON object on stdout instead of a table (no progress bar)
    #[arg(long)]
    pub json: bool,
}

/// `--pairs`: the library's [`Pairs`] as a flag value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PairsArg {
    /// Uniform random distinct pairs
    Random,
    /// Pairs whose ids hash to the same slot
    SameSlot,
    /// Pairs whose ids hash to different slots
    CrossSlot,
}

impl From<PairsArg> for Pairs {
    fn from(arg: PairsArg) -> Pairs {
        match arg {
            PairsArg::Random => Pairs::Random,
            PairsArg::SameSlot => Pairs::SameSlot,
            PairsArg::CrossSlot => Pairs::CrossSlot,
        }
    }
}

/// Runs the benchmark in the chosen mode and prints its report; exit 1 if the balance check
/// failed.
pub fn run(global: &GlobalOpts, args: BenchArgs) -> Result<(), Failure> {
    debug_assert!(
        args.direct != args.e2e,
        "the mode group is required and exclusive"
    );
    let progress = !args.json && std::io::stderr().is_terminal();
    let report = if args.e2e {
        let config = e2e_config(&args, &global.brokers, progress);
        config.validate().map_err(flag_error)?;
        let service = global.connect(2)?;
        bench::run_e2e(&service, &config)?
    } else {
        let config = direct_config(&args, progress);
        config.validate().map_err(flag_error)?;
        // At most BENCH_THREADS_LIMIT once validated, so the cast keeps the value. On a
        // cluster a cross-slot transfer holds a connection on each wallet's primary, two on
        // one primary when both slots live there: twice the threads per primary.
        let per_thread = if global.redis_cluster.is_some() { 2 } else { 1 };
        let service = global.connect(config.threads as u32 * per_thread)?;
        bench::run_direct(&service, &config)?
    };
    if args.json {
        print_out(&format!("{}\n", report.to_json()))?;
    } else {
        print_out(&format!("{}\n", report.to_table()))?;
    }
    report.check().map_err(Failure::runtime)
}

/// The settings of a direct run from the flags.
fn direct_config(args: &BenchArgs, progress: bool) -> DirectConfig {
    DirectConfig::default()
        .with_threads(args.threads)
        .with_transfers(args.transfers)
        .with_wallets(args.wallets)
        .with_hot(args.hot)
        .with_pairs(args.pairs.into())
        .with_transient_retries(args.transient_retries)
        .with_progress(progress)
        .with_cleanup(args.cleanup)
}

/// The settings of an end-to-end run from the flags.
fn e2e_config(args: &BenchArgs, brokers: &str, progress: bool) -> E2eConfig {
    E2eConfig::default()
        .with_kafka(KafkaConfig::new(brokers))
        .with_requests_topic(args.requests_topic.clone())
        .with_results_topic(args.results_topic.clone())
        .with_transfers(args.transfers)
        .with_wallets(args.wallets)
        .with_hot(args.hot)
        .with_timeout(Duration::from_secs(args.timeout_s))
        .with_rate(args.rate)
        .with_progress(progress)
        .with_cleanup(args.cleanup)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Command, flag_help, parse};

    fn bench_args(flags: &[&str]) -> BenchArgs {
        let argv: Vec<&str> = std::iter::once("bench")
            .chain(flags.iter().copied())
            .collect();
        match parse(&argv).unwrap().command {
            Command::Bench(args) => args,
            other => panic!("not bench: {other:?}"),
        }
    }

    #[test]
    fn needs_exactly_one_mode() {
        assert!(parse(&["bench"]).is_err());
        assert!(parse(&["bench", "--direct", "--e2e"]).is_err());
        assert!(parse(&["bench", "--direct"]).is_ok());
        assert!(parse(&["bench", "--e2e"]).is_ok());
    }

    #[test]
    fn direct_defaults_are_the_library_defaults() {
        let args = bench_args(&["--direct"]);
        assert_eq!(direct_config(&args, false), DirectConfig::default());
    }

    #[test]
    fn e2e_defaults_are_the_library_defaults() {
        let args = bench_args(&["--e2e"]);
        let config = e2e_config(&args, "127.0.0.1:9092", false);
        // One --transfers flag serves both modes; its default is the direct one.
        assert_eq!(config.transfers, DirectConfig::default().transfers);
        assert_eq!(
            config,
            E2eConfig::default().with_transfers(config.transfers)
        );
    }

    #[test]
    fn flags_reach_the_config() {
        let args = bench_args(&[
            "--e2e",
            "--transfers",
            "7",
            "--wallets",
            "3",
            "--hot",
            "--rate",
            "9",
            "--timeout-s",
            "5",
            "--cleanup",
        ]);
        let config = e2e_config(&args, "k:1", true);
        assert_eq!((config.transfers, config.wallets), (7, 3));
        assert!(config.hot && config.cleanup && config.progress);
        assert_eq!(config.rate, Some(9));
        assert_eq!(config.timeout, Duration::from_secs(5));
        assert_eq!(config.kafka.brokers, "k:1");
        let args = bench_args(&["--direct", "--threads", "3", "--transient-retries", "0"]);
        let config = direct_config(&args, false);
        assert_eq!((config.threads, config.transient_retries), (3, 0));
        assert_eq!(config.pairs, Pairs::Random);
        for (flag, pairs) in [
            ("random", Pairs::Random),
            ("same-slot", Pairs::SameSlot),
            ("cross-slot", Pairs::CrossSlot),
        ] {
            let args = bench_args(&["--direct", "--pairs", flag]);
            assert_eq!(direct_config(&args, false).pairs, pairs);
            assert_eq!(pairs.as_str(), flag, "the flag spells the library's name");
        }
        assert!(parse(&["bench", "--direct", "--pairs", "nearby"]).is_err());
    }

    #[test]
    fn bounds_are_the_library_limits() {
        for (flag, min, max) in [
            ("threads", 1, bench::BENCH_THREADS_LIMIT as u64),
            ("transfers", 1, bench::BENCH_TRANSFERS_LIMIT),
            (
                "wallets",
                u64::from(bench::BENCH_WALLETS_MIN),
                u64::from(bench::BENCH_WALLETS_LIMIT),
            ),
            (
                "transient-retries",
                0,
                u64::from(bench::BENCH_TRANSIENT_RETRIES_LIMIT),
            ),
        ] {
            let help = flag_help("bench", flag);
            assert!(
                help.contains(&format!("{min} to {max}")),
                "--{flag}: {help}"
            );
            let long = format!("--{flag}");
            for ok in [min, max] {
                let ok = ok.to_string();
                assert!(
                    parse(&["bench", "--direct", &long, &ok]).is_ok(),
                    "{long} {ok}"
                );
            }
            let over = (max + 1).to_string();
            let e = parse(&["bench", "--direct", &long, &over]).unwrap_err();
            assert!(e.to_string().contains(&long), "{e}");
        }
    }

    #[test]
    fn a_broken_setting_names_its_flag() {
        let args = bench_args(&["--e2e", "--requests-topic", "t", "--results-topic", "t"]);
        let e = flag_error(e2e_config(&args, "k:1", false).validate().unwrap_err());
        assert_eq!(e.exit_code(), 2);
        assert_eq!(
            e.to_string(),
            "--results-topic must differ from --requests-topic, both are \"t\""
        );
    }

    #[test]
    fn help_states_the_opening_balance_of_the_library() {
        let (_, help) = crate::cli::subcommand_help("bench");
        let opening = wallet_transfer::Amount::from_minor(bench::BENCH_OPENING_CENTS);
        assert!(help.contains(&format!("{opening} each")), "{help}");
    }
}
