//! `wallet locks`: lists the held wallet locks (`lock:*`) with owner token and remaining ttl,
//! and fails (exit 1) when any has no ttl, since such a lock blocks its wallet for ever. On a
//! Redis Cluster (`--redis-cluster`) it scans every primary and shows each lock's shard: the
//! primary's address and the slot.
//!
//! Owns the table and the failure message. Does not own reading the locks or what counts as a
//! problem (`tools::ops::locks`, `LockInfo::is_problem`), nor deleting any.

use clap::Args;
use comfy_table::Table;
use wallet_transfer::tools::ops::{self, LockInfo};

use crate::cli::{Failure, GlobalOpts, json_out, new_table, print_out};

#[derive(Debug, Args)]
#[command(
    after_help = "ttl is the remaining time to live in milliseconds. A lock without a ttl is \
                  never released by itself and blocks its wallet for ever: such locks are \
                  flagged and the exit code is 1 (delete one with redis-cli DEL lock:<id> once \
                  its holder is known to be gone).\n\
                  With --redis-cluster: every primary is scanned and each lock shows its shard, \
                  the primary (HOST:PORT) and the hash slot (delete one there with redis-cli -c \
                  -h HOST -p PORT DEL 'lock:{<id>}').\n\
                  Example: wallet locks --json"
)]
pub struct LocksArgs {
    /// Print a JSON array of locks instead of a table
    #[arg(long)]
    pub json: bool,
}

/// Prints the held locks; exit 1 if any never expires.
pub fn run(global: &GlobalOpts, args: LocksArgs) -> Result<(), Failure> {
    let service = global.connect(1)?;
    let locks = ops::locks(&service)?;
    if args.json {
        json_out(&locks)?;
    } else {
        print_out(&format!(
            "{}\n{} locks held\n",
            locks_table(&locks),
            locks.len()
        ))?;
    }
    match problems(&locks) {
        Some(failure) => Err(failure),
        None => Ok(()),
    }
}

/// One line per lock; a lock without ttl says so. Locks of a cluster also show their shard.
fn locks_table(locks: &[LockInfo]) -> Table {
    let sharded = locks.iter().any(|l| l.primary.is_some());
    let mut header = vec!["key", "owner", "ttl ms", "problem"];
    if sharded {
        header.extend(["primary", "slot"]);
    }
    let mut table = new_table(&header);
    for l in locks {
        let mut row = vec![
            l.key.clone(),
            l.owner.clone().unwrap_or_else(|| "-".into()),
            l.ttl_ms.map_or_else(|| "none".into(), |t| t.to_string()),
            if l.is_problem() {
                "NO TTL: never expires".into()
            } else {
                String::new()
            },
        ];
        if sharded {
            row.push(l.primary.clone().unwrap_or_else(|| "-".into()));
            row.push(l.slot.map_or_else(|| "-".into(), |s| s.to_string()));
        }
        table.add_row(row);
    }
    table
}

/// The failure naming every lock that never expires, if there is one.
fn problems(locks: &[LockInfo]) -> Option<Failure> {
    let keys: Vec<&str> = locks
        .iter()
        .filter(|l| l.is_problem())
        .map(|l| l.key.as_str())
        .collect();
    (!keys.is_empty()).then(|| {
        Failure::runtime(format!(
            "{} lock(s) without a ttl, never released by themselves: {}",
            keys.len(),
            keys.join(", ")
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(key: &str, ttl_ms: Option<i64>) -> LockInfo {
        LockInfo {
            key: key.into(),
            owner: Some("tok".into()),
            ttl_ms,
            primary: None,
            slot: None,
        }
    }

    #[test]
    fn locks_without_ttl_are_flagged_and_fail() {
        let locks = [
            lock("lock:a", Some(900)),
            lock("lock:b", None),
            lock("lock:c", None),
        ];
        let text = locks_table(&locks).to_string();
        let b = text.lines().find(|l| l.contains("lock:b")).unwrap();
        assert!(b.contains("none") && b.contains("NO TTL"), "{text}");
        let a = text.lines().find(|l| l.contains("lock:a")).unwrap();
        assert!(a.contains("900") && !a.contains("NO TTL"), "{text}");
        let failure = problems(&locks).unwrap();
        assert_eq!(failure.exit_code(), 1);
        assert_eq!(
            failure.to_string(),
            "2 lock(s) without a ttl, never released by themselves: lock:b, lock:c"
        );
        assert!(problems(&locks[..1]).is_none());
        assert!(problems(&[]).is_none());
        assert!(!text.contains("slot"), "one Redis shows no shard: {text}");
    }

    #[test]
    fn locks_of_a_cluster_show_their_primary_and_slot() {
        let sharded = LockInfo {
            primary: Some("127.0.0.1:7001".into()),
            slot: Some(866),
            ..lock("lock:{a}", Some(500))
        };
        let text = locks_table(std::slice::from_ref(&sharded)).to_string();
        assert!(text.contains("primary") && text.contains("slot"), "{text}");
        let row = text.lines().find(|l| l.contains("lock:{a}")).unwrap();
        assert!(
            row.contains("127.0.0.1:7001") && row.contains("866"),
            "{text}"
        );
        let json = serde_json::to_value(&sharded).unwrap();
        assert_eq!(json["slot"], 866);
        let plain = serde_json::to_value(lock("lock:a", Some(1))).unwrap();
        assert!(plain.get("primary").is_none(), "{plain}");
    }
}
