//! Network partitions between the nodes of a test cluster, made with iptables.
//!
//! A run takes a block of loopback addresses of its own, `127.0.K.1`, `127.0.K.2`, ... (all of
//! 127.0.0.0/8 reaches `lo`), one per node ([`Subnet`]); the nodes bind, announce and connect
//! from their own address (`RedisCluster::start_on_addresses`), while the worker and the test
//! connect from 127.0.0.1. A [`Partition`] drops, in the INPUT chain, every packet between the
//! isolated node's address and each other node's address, both ways: cluster bus and
//! replication are cut, clients still reach the node. Dropping on input (not output) makes
//! the cut silent, as a real one is: senders see timeouts, not errors.
//!
//! Every rule carries the comment `wallet-test-<pid>-<run id>` and matches only the run's own
//! addresses; the rules are deleted when the [`Partition`] is dropped (on a panic too).
//! [`Subnet::take`] first deletes rules left by test processes that no longer run (a test
//! killed mid-partition), and never touches any other rule.
//!
//! Needs `iptables` and root (CI runs as root on Debian; `scripts/install-deps.sh` installs
//! it); without them the test fails saying so.

use std::collections::HashSet;
use std::process::Command;
use std::sync::Mutex;

use rand::RngExt;

/// Every rule of these tests carries a comment starting with this.
pub const COMMENT_PREFIX: &str = "wallet-test-";
/// The chain the rules go in.
const CHAIN: &str = "INPUT";
/// Third bytes of 127.0.K.0/24 in use by this process.
static TAKEN: Mutex<Option<HashSet<u8>>> = Mutex::new(None);

/// A run's own loopback addresses `127.0.K.1..` and the comment its rules carry.
pub struct Subnet {
    k: u8,
    /// `wallet-test-<pid>-<run id>`.
    pub tag: String,
}

impl Subnet {
    /// A free block: checks iptables, deletes stale test rules, then takes a K that no rule
    /// names and no other test of this process holds.
    pub fn take() -> Subnet {
        let rules = list_rules();
        sweep_stale(&rules);
        let rules = list_rules();
        let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
        let taken = taken.get_or_insert_with(HashSet::new);
        let mut rng = rand::rng();
        for _ in 0..1_000 {
            let k: u8 = rng.random_range(2..=254);
            let named = rules.iter().any(|r| r.contains(&format!(" 127.0.{k}.")));
            if !named && taken.insert(k) {
                let tag = format!(
                    "{COMMENT_PREFIX}{}-{:06x}",
                    std::process::id(),
                    rng.random_range(0..0x100_0000u32)
                );
                println!("partition: addresses 127.0.{k}.0/24, iptables comment {tag}");
                return Subnet { k, tag };
            }
        }
        panic!("no free 127.0.K.0/24 block in 1000 tries");
    }

    /// `n` addresses, `127.0.K.1` to `127.0.K.n`.
    pub fn ips(&self, n: u8) -> Vec<String> {
        (1..=n).map(|i| format!("127.0.{}.{i}", self.k)).collect()
    }

    /// The rules carrying this run's comment (none once every [`Partition`] is dropped).
    pub fn rules(&self) -> Vec<String> {
        let mark = format!("--comment {} ", self.tag);
        list_rules()
            .into_iter()
            .filter(|r| format!("{r} ").contains(&mark))
            .collect()
    }
}

impl Drop for Subnet {
    fn drop(&mut self) {
        if let Some(taken) = TAKEN.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            taken.remove(&self.k);
        }
    }
}

/// One node cut off from others: the DROP rules, deleted on drop.
pub struct Partition {
    /// The rule specs added, as `iptables -I/-D INPUT` arguments.
    rules: Vec<Vec<String>>,
    isolated: String,
}

impl Partition {
    /// Cuts `node` (an address of `subnet`) off from every address of `others`, both ways.
    pub fn isolate(subnet: &Subnet, node: &str, others: &[String]) -> Partition {
        let mut partition = Partition {
            rules: Vec::new(),
            isolated: node.to_string(),
        };
        for other in others.iter().filter(|o| *o != node) {
            for (src, dst) in [(node, other.as_str()), (other.as_str(), node)] {
                let spec: Vec<String> = [
                    "-s",
                    src,
                    "-d",
                    dst,
                    "-m",
                    "comment",
                    "--comment",
                    &subnet.tag,
                    "-j",
                    "DROP",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                // On failure the rules added so far are deleted by the drop.
                iptables(&["-I", CHAIN], &spec).unwrap_or_else(|e| panic!("{e}"));
                partition.rules.push(spec);
            }
        }
        println!(
            "partition: {node} cut off from {} nodes ({} rules)",
            partition.rules.len() / 2,
            partition.rules.len()
        );
        partition
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        for spec in self.rules.drain(..) {
            if let Err(e) = iptables(&["-D", CHAIN], &spec) {
                eprintln!("partition: COULD NOT DELETE an iptables rule, delete it by hand: {e}");
            }
        }
        println!("partition: {} healed", self.isolated);
    }
}

/// `iptables -w ARGS SPEC`; the error says what ran and what it said.
fn iptables(args: &[&str], spec: &[String]) -> Result<(), String> {
    let out = Command::new("iptables")
        .arg("-w")
        .args(args)
        .args(spec)
        .output()
        .map_err(|e| missing(&e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "iptables -w {} {} failed: {}",
            args.join(" "),
            spec.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn missing(why: &str) -> String {
    format!(
        "the partition tests cut node-to-node traffic with iptables, which could not run \
         ({why}): install it (apt-get install -y iptables, or scripts/install-deps.sh) and run \
         the tests as root"
    )
}

/// The rules of the chain, `iptables -S` lines; panics, saying what is needed, when iptables
/// is missing or refuses (not root).
fn list_rules() -> Vec<String> {
    let out = Command::new("iptables")
        .args(["-w", "-S", CHAIN])
        .output()
        .unwrap_or_else(|e| panic!("{}", missing(&e.to_string())));
    assert!(
        out.status.success(),
        "{}",
        missing(String::from_utf8_lossy(&out.stderr).trim())
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Deletes the rules whose comment names a test process that no longer runs
/// (`wallet-test-<pid>-...` with no `/proc/<pid>`); leaves every other rule alone.
fn sweep_stale(rules: &[String]) {
    for rule in rules {
        let Some(pid) = rule
            .split(&format!("--comment {COMMENT_PREFIX}"))
            .nth(1)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let Some(spec) = rule.strip_prefix(&format!("-A {CHAIN} ")) else {
            continue;
        };
        let spec: Vec<String> = spec.split_whitespace().map(str::to_string).collect();
        match iptables(&["-D", CHAIN], &spec) {
            Ok(()) => println!("partition: deleted a rule left by a dead test process: {rule}"),
            Err(e) => eprintln!("partition: could not delete a stale test rule: {e}"),
        }
    }
}
