//! What Redis itself counted over a run, and what the run left there: the `INFO commandstats
//! memory cpu` counters of every Redis the service talks to (one Redis, or each primary of a
//! cluster) before and after the transfer phase, and the reads of the run's outcome records
//! (with or without a ttl), history lengths, checkpoints and wallet sizes.
//!
//! Owns the parsing of INFO (pure: [`parse_command_calls`] and the counters) and these reads,
//! pipelined in batches, per node on a cluster. Reads only. Does not own the figures they end
//! in (`figures`), or when they are taken (`direct`, `e2e`).

use indicatif::ProgressBar;

use crate::engine::retention::CHECKPOINT_ENTRIES_FIELD;
use crate::engine::service::WalletService;
use crate::engine::store::{self, Conn, PooledConn};
use crate::tools::bench::error::BenchError;
use crate::tools::bench::figures::NodeCost;
use crate::tools::bench::setup::{BATCH, by_node};

/// Counts the outcome records of run `run` on every shard and those with a ttl: SCAN of
/// [`KeySpace::run_outcome_pattern`] (on a cluster the sender is in the key, and the bench
/// does not record who sent what), then PTTL of each batch, pipelined. `bar` advances per
/// record. Returns (records, with ttl).
///
/// [`KeySpace::run_outcome_pattern`]: crate::engine::keyspace::KeySpace::run_outcome_pattern
pub(super) fn count_outcome_records(
    service: &WalletService,
    run: &str,
    bar: &ProgressBar,
) -> Result<(u64, u64), BenchError> {
    let topology = service.topology();
    let pattern = topology.key_space().run_outcome_pattern(run);
    let (mut records, mut with_ttl) = (0, 0);
    for shard in topology.shards() {
        let mut conn = topology.conn_for_shard::<BenchError>(&shard)?;
        store::scan_each(&mut conn, None, &pattern, Some("hash"), |conn, batch| {
            let (found, ttl) = count_ttls(conn, &batch)?;
            records += found;
            with_ttl += ttl;
            bar.inc(batch.len() as u64);
            Ok::<_, BenchError>(())
        })?;
    }
    Ok((records, with_ttl))
}

/// PTTL of `keys` in one pipeline: (how many exist, how many of them have a ttl).
fn count_ttls(conn: &mut Conn, keys: &[String]) -> Result<(u64, u64), BenchError> {
    let mut pipe = redis::pipe();
    for key in keys {
        pipe.cmd("PTTL").arg(key);
    }
    let ttls: Vec<i64> = pipe.query(&mut conn.redis)?;
    let existing = ttls.iter().filter(|&&t| t != -2).count() as u64;
    let with_ttl = ttls.iter().filter(|&&t| t >= 0).count() as u64;
    Ok((existing, with_ttl))
}

/// Sums the history lengths of `ids` (XLEN of an older stream plus LLEN of the log) and their
/// checkpoints' `hc`, pipelined in batches;
/// `bar` advances per wallet. Returns (entries kept, entries trimmed).
pub(super) fn count_history(
    service: &WalletService,
    ids: &[String],
    bar: &ProgressBar,
) -> Result<(u64, u64), BenchError> {
    let space = service.key_space();
    let (mut kept, mut trimmed) = (0, 0);
    for (mut conn, ids) in by_node(service, ids)? {
        for chunk in ids.chunks(BATCH) {
            let mut pipe = redis::pipe();
            for id in chunk {
                pipe.xlen(space.history(id))
                    .llen(space.log(id))
                    .hget(space.wallet(id), CHECKPOINT_ENTRIES_FIELD);
            }
            // XLEN, LLEN then HGET per wallet; a missing history or checkpoint counts 0.
            let replies: Vec<Option<u64>> = pipe.query(&mut conn.redis)?;
            for three in replies.chunks(3) {
                kept += three[0].unwrap_or(0) + three.get(1).copied().flatten().unwrap_or(0);
                trimmed += three.get(2).copied().flatten().unwrap_or(0);
            }
            bar.inc(chunk.len() as u64);
        }
    }
    Ok((kept, trimmed))
}

/// Most wallets `sample_wallet_bytes` measures.
pub const WALLET_BYTES_SAMPLE: usize = 100;

/// The mean `MEMORY USAGE ... SAMPLES 0` of the hash, the log and the older stream of the
/// wallets with history among up to [`WALLET_BYTES_SAMPLE`] of `ids`, spread evenly; 0 when
/// none has history.
pub(super) fn sample_wallet_bytes(
    service: &WalletService,
    ids: &[String],
) -> Result<u64, BenchError> {
    let step = ids.len().div_ceil(WALLET_BYTES_SAMPLE).max(1);
    let sample: Vec<String> = ids.iter().step_by(step).cloned().collect();
    let space = service.key_space();
    let (mut total, mut with_history) = (0, 0);
    for (mut conn, ids) in by_node(service, &sample)? {
        let mut pipe = redis::pipe();
        for id in &ids {
            for key in [space.wallet(id), space.log(id), space.history(id)] {
                pipe.cmd("MEMORY")
                    .arg("USAGE")
                    .arg(key)
                    .arg("SAMPLES")
                    .arg(0);
            }
        }
        // Per wallet: its hash, its log, its stream; nil for a key that does not exist.
        let bytes: Vec<Option<u64>> = pipe.query(&mut conn.redis)?;
        for three in bytes.chunks(3) {
            if three[1..].iter().any(Option::is_some) {
                total += three.iter().flatten().sum::<u64>();
                with_history += 1;
            }
        }
    }
    Ok(total / u64::max(with_history, 1))
}

/// One Redis's counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Counters {
    pub(super) commands: u64,
    pub(super) command_usec: u64,
    pub(super) used_memory: i64,
    pub(super) cpu_us: u64,
}

/// The counters of `INFO commandstats memory cpu`. Pure.
fn parse_counters(info: &str) -> Counters {
    let cpu_s = |field: &str| -> f64 {
        info.lines()
            .find_map(|l| l.strip_prefix(field)?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    Counters {
        commands: parse_command_calls(info),
        command_usec: sum_cmdstat_field(info, "usec="),
        used_memory: parse_used_memory(info),
        cpu_us: ((cpu_s("used_cpu_sys:") + cpu_s("used_cpu_user:")) * 1e6).round() as u64,
    }
}

/// Every Redis the service talks to, `(address, counters)`: one Redis (named `redis`), or
/// every primary of a cluster's map, sorted. One INFO call each.
pub(super) fn node_counters(
    service: &WalletService,
) -> Result<Vec<(String, Counters)>, BenchError> {
    let read = |conn: &mut PooledConn| -> Result<Counters, BenchError> {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .arg("memory")
            .arg("cpu")
            .query(&mut conn.redis)?;
        Ok(parse_counters(&info))
    };
    let topology = service.topology();
    topology
        .shards()
        .into_iter()
        .map(|shard| {
            let counters = read(&mut topology.conn_for_shard::<BenchError>(&shard)?)?;
            Ok((shard.label().to_string(), counters))
        })
        .collect()
}

/// Each node's costs between `before` and `after` (matched by address; a node missing
/// after, say failed over, counts nothing).
pub(super) fn node_costs(
    before: &[(String, Counters)],
    after: &[(String, Counters)],
) -> Vec<NodeCost> {
    before
        .iter()
        .map(|(addr, b)| {
            let a = after
                .iter()
                .find(|(x, _)| x == addr)
                .map_or(*b, |(_, a)| *a);
            NodeCost {
                addr: addr.clone(),
                commands: a.commands.saturating_sub(b.commands),
                command_usec: a.command_usec.saturating_sub(b.command_usec),
                cpu_us: a.cpu_us.saturating_sub(b.cpu_us),
                used_memory_delta_bytes: a.used_memory - b.used_memory,
            }
        })
        .collect()
}

/// Sums the number after `field` (`calls=`, `usec=`) over the `cmdstat_*` lines of `INFO
/// commandstats`, leaving out INFO itself. Pure.
fn sum_cmdstat_field(info: &str, field: &str) -> u64 {
    info.lines()
        .filter(|l| l.starts_with("cmdstat_") && !l.starts_with("cmdstat_info:"))
        .filter_map(|l| {
            l.split(field)
                .nth(1)?
                .split(',')
                .next()?
                .trim()
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// Sums `calls=` over the `cmdstat_*` lines of `INFO commandstats`, leaving out INFO itself:
/// the commands Redis has run. Pure.
pub fn parse_command_calls(info: &str) -> u64 {
    sum_cmdstat_field(info, "calls=")
}

/// `used_memory:` of `INFO memory`. Pure.
fn parse_used_memory(info: &str) -> i64 {
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:")?.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::bench::figures::RedisCost;

    #[test]
    fn redis_counters_come_from_info_and_leave_info_out() {
        let stats = "# Commandstats\r\ncmdstat_set:calls=4,usec=1\r\ncmdstat_info:calls=9,usec=1\r\ncmdstat_exec:calls=2,usec=3,rejected_calls=0\r\n";
        assert_eq!(parse_command_calls(stats), 6);
        assert_eq!(
            parse_used_memory("# Memory\r\nused_memory:123456\r\nused_memory_human:1M\r\n"),
            123_456
        );
        let cost = RedisCost {
            commands: 1_400,
            used_memory_delta_bytes: 40_000,
        };
        assert_eq!(cost.per_transfer(100), (14.0, 400.0));
    }

    #[test]
    fn counters_come_from_one_info_reply() {
        let info = "# Commandstats\r\ncmdstat_set:calls=4,usec=10,usec_per_call=2.50,rejected_calls=0,failed_calls=0\r\ncmdstat_info:calls=9,usec=100,usec_per_call=11.1\r\n# Memory\r\nused_memory:2048\r\n# CPU\r\nused_cpu_sys:1.250000\r\nused_cpu_user:0.500001\r\nused_cpu_sys_children:9.0\r\n";
        let c = parse_counters(info);
        assert_eq!(
            c,
            Counters {
                commands: 4,
                command_usec: 10,
                used_memory: 2048,
                cpu_us: 1_750_001,
            }
        );
        let before = [("n1".to_string(), c), ("n2".to_string(), c)];
        let mut later = c;
        later.commands += 6;
        later.cpu_us += 300;
        later.used_memory -= 48;
        let costs = node_costs(&before, &[("n1".to_string(), later)]);
        assert_eq!(costs[0].commands, 6);
        assert_eq!(costs[0].cpu_us, 300);
        assert_eq!(costs[0].used_memory_delta_bytes, -48);
        assert_eq!(
            costs[1],
            NodeCost {
                addr: "n2".into(),
                ..NodeCost::default()
            }
        );
    }
}
