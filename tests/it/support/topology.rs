//! One semantic suite on every topology (issue 20): a test written once against a [`Bed`]
//! runs on one Redis and on a 3-primary Redis Cluster with its wallets forced into one hash
//! slot (the one-transaction algorithm on the slot's primary) and forced into a slot each (the
//! cross-slot steps), as ripgrep runs each test under both regex engines.
//!
//! A test names its wallets logically (`"a"`, `"b"`); [`Bed::id`] maps each name to a real id
//! that obeys the topology's rule, the same one every time it is asked. Raw reads go through
//! [`Bed::conn_for`] and [`Bed::keys`], so a test never spells a key itself.
//!
//! `on_every_topology!(test_fn)` makes `mod test_fn { one_redis, cluster }`: the cluster test
//! runs the same-slot and the cross-slot beds one after the other on one cluster (distinct id
//! prefixes), to start one cluster rather than two.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use wallet_transfer::engine::cluster::{hash_slot, keys};
use wallet_transfer::engine::keyspace::KeySpace;
use wallet_transfer::{EngineConfig, WalletService};

use super::RedisServer;
use super::cluster::RedisCluster;

/// Where a semantic test runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// One redis-server, the original key names.
    OneRedis,
    /// A cluster, every wallet of the test in one slot.
    ClusterSameSlot,
    /// A cluster, every wallet of the test in a slot of its own.
    ClusterCrossSlot,
}

/// The servers a bed runs on: its own Redis, or a cluster it shares.
pub enum Servers<'c> {
    One(RedisServer),
    Cluster(&'c RedisCluster),
}

/// A test bed: the engine on one topology, and the map from logical wallet names to ids.
pub struct Bed<'c> {
    pub topology: Topology,
    servers: Servers<'c>,
    pub service: WalletService,
    prefix: &'static str,
    ids: Mutex<HashMap<String, String>>,
}

/// Connections per service (per primary on a cluster): the races run 200 threads at once.
const POOL_SIZE: u32 = 64;

impl<'c> Bed<'c> {
    /// A bed on a Redis of its own.
    pub fn one_redis(config: EngineConfig) -> Bed<'static> {
        let redis = RedisServer::start();
        let service = redis.service(POOL_SIZE, config);
        Bed {
            topology: Topology::OneRedis,
            servers: Servers::One(redis),
            service,
            prefix: "",
            ids: Mutex::new(HashMap::new()),
        }
    }

    /// A bed on `cluster`, its wallets forced into one slot or into a slot each.
    pub fn on_cluster(cluster: &'c RedisCluster, same_slot: bool, config: EngineConfig) -> Bed<'c> {
        let service =
            WalletService::connect_cluster(&cluster.seeds(), "redis://", POOL_SIZE, config)
                .expect("connect to the test cluster");
        let (topology, prefix) = match same_slot {
            true => (Topology::ClusterSameSlot, "ss_"),
            false => (Topology::ClusterCrossSlot, "cs_"),
        };
        Bed {
            topology,
            servers: Servers::Cluster(cluster),
            service,
            prefix,
            ids: Mutex::new(HashMap::new()),
        }
    }

    /// The real id of the logical wallet `name`: the name itself on one Redis; on a cluster
    /// `{prefix}{name}_{n}`, with the first `n` that puts it in the bed's one slot (same
    /// slot) or in a slot no other wallet of the bed has (cross slot).
    pub fn id(&self, name: &str) -> String {
        let mut ids = self.ids.lock().unwrap();
        if let Some(id) = ids.get(name) {
            return id.clone();
        }
        let id = match self.topology {
            Topology::OneRedis => name.to_string(),
            Topology::ClusterSameSlot => {
                let slot = keys::wallet_slot(&format!("{}anchor", self.prefix));
                self.find(name, |s| s == slot)
            }
            Topology::ClusterCrossSlot => {
                let taken: BTreeSet<u16> = ids.values().map(|id| keys::wallet_slot(id)).collect();
                self.find(name, |s| !taken.contains(&s))
            }
        };
        ids.insert(name.to_string(), id.clone());
        id
    }

    fn find(&self, name: &str, fits: impl Fn(u16) -> bool) -> String {
        (0..1_000_000)
            .map(|n| format!("{}{name}_{n}", self.prefix))
            .find(|id| fits(keys::wallet_slot(id)))
            .expect("an id in the slot asked for")
    }

    /// The key names of this topology.
    pub fn keys(&self) -> KeySpace {
        self.service.key_space()
    }

    /// A plain connection to the node that holds `key`.
    pub fn conn_for(&self, key: &str) -> redis::Connection {
        match &self.servers {
            Servers::One(redis) => redis.conn(),
            Servers::Cluster(cluster) => {
                let slot = hash_slot(key.as_bytes());
                let port = cluster
                    .owner_of(cluster.primary_ports()[0], slot)
                    .expect("a primary for the slot");
                cluster.conn(port)
            }
        }
    }

    /// Every lock key of this bed's wallets still in Redis.
    pub fn locks(&self) -> Vec<String> {
        let ids: Vec<String> = self.ids.lock().unwrap().values().cloned().collect();
        let space = self.keys();
        ids.iter()
            .map(|id| space.lock(id))
            .filter(|key| {
                redis::cmd("EXISTS")
                    .arg(key)
                    .query::<bool>(&mut self.conn_for(key))
                    .expect("EXISTS")
            })
            .collect()
    }

    /// Creates active USD wallets (logical names) with the given balances.
    pub fn create(&self, wallets: &[(&str, &str)]) {
        let ids: Vec<String> = wallets.iter().map(|(name, _)| self.id(name)).collect();
        let real: Vec<(&str, &str)> = ids
            .iter()
            .zip(wallets)
            .map(|(id, (_, balance))| (id.as_str(), *balance))
            .collect();
        super::create_wallets(&self.service, &real);
    }

    /// Round trips of an uncontended transfer on this topology: 2 on one Redis; on a cluster
    /// the key's claim (`key_claim`) and then 2 in one slot, 6 across.
    pub fn uncontended_round_trips(&self) -> u32 {
        match self.topology {
            Topology::OneRedis => 2,
            Topology::ClusterSameSlot => 1 + 2,
            Topology::ClusterCrossSlot => 1 + 6,
        }
    }

    /// Most commands Redis runs for an uncontended transfer: 14 in one slot; 27 across (20
    /// sent, 7 more inside the two scripts); on a cluster one more, the key's claim.
    pub fn uncontended_commands_max(&self) -> u64 {
        match self.topology {
            Topology::OneRedis => 14,
            Topology::ClusterSameSlot => 1 + 14,
            Topology::ClusterCrossSlot => 1 + 27,
        }
    }

    /// A connection to every node that holds keys: the one Redis, or every primary.
    fn primaries(&self) -> Vec<redis::Connection> {
        match &self.servers {
            Servers::One(redis) => vec![redis.conn()],
            Servers::Cluster(cluster) => cluster
                .primary_ports()
                .into_iter()
                .map(|port| cluster.conn(port))
                .collect(),
        }
    }

    /// Commands Redis has run so far, summed over every primary (`INFO commandstats`, INFO
    /// left out). On a cluster it counts the other bed's too: count while it is idle.
    pub fn commands_run(&self) -> u64 {
        self.primaries()
            .iter_mut()
            .map(|conn| {
                let info: String = redis::cmd("INFO")
                    .arg("commandstats")
                    .query(conn)
                    .expect("INFO commandstats");
                wallet_transfer::tools::bench::parse_command_calls(&info)
            })
            .sum()
    }

    /// Every key on every primary that matches `pattern` (a SCAN MATCH glob).
    pub fn scan(&self, pattern: &str) -> BTreeSet<String> {
        self.primaries()
            .iter_mut()
            .flat_map(|conn| super::scan(conn, pattern, None))
            .collect()
    }

    /// The outcome records of every transfer sent by one of this bed's wallets.
    pub fn outcome_records(&self) -> BTreeSet<String> {
        let ids: Vec<String> = self.ids.lock().unwrap().values().cloned().collect();
        let space = self.keys();
        let patterns: BTreeSet<String> = ids.iter().map(|id| space.outcome(id, "*")).collect();
        patterns.iter().flat_map(|p| self.scan(p)).collect()
    }
}

/// `on_every_topology!(f)` for `fn f(bed: &Bed)`: `f::one_redis` and `f::cluster` (same slot,
/// then cross slot, on one 3-primary cluster), each with `EngineConfig` from `$config`.
#[macro_export]
macro_rules! on_every_topology {
    ($name:ident, $config:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            use $crate::support::cluster::RedisCluster;
            use $crate::support::topology::Bed;

            #[test]
            fn one_redis() {
                super::$name(&Bed::one_redis($config));
            }

            #[test]
            fn cluster() {
                let cluster = RedisCluster::start(3, 0);
                for same_slot in [true, false] {
                    // Idempotency keys are global (`key_claim`): each bed starts from nothing.
                    cluster.flush();
                    super::$name(&Bed::on_cluster(&cluster, same_slot, $config));
                }
            }
        }
    };
}
