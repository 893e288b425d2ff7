//! A Redis Cluster of plain `redis-server` processes on free loopback ports, in one temporary
//! folder: created with `redis-cli --cluster create`, waited on until every node says
//! `cluster_state:ok` with all slots assigned, and killed when dropped. Helpers kill a primary
//! and wait for its replica's promotion, and migrate a slot step by step (so tests can provoke
//! MOVED and ASK).
//!
//! Nodes listen on 127.0.0.1 ([`RedisCluster::start`]), or each on an address of its own
//! ([`RedisCluster::start_on_addresses`]: `--bind`, `--cluster-announce-ip` and
//! `--bind-source-addr`, so node-to-node traffic, cluster bus and replication, goes between
//! the nodes' own addresses and a partition can cut it with iptables, see
//! `support::partition`). Nodes are told apart by port: the ports of one cluster differ.
//!
//! No persistence (`--save ''`, no AOF): a killed node is not started again; its replica
//! takes over.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{Proc, START_TIMEOUT_MS, find_binary, log_to, wait_until};
use wallet_transfer::engine::cluster::hash_slot;
use wallet_transfer::engine::keyspace::KeySpace;

/// How long the cluster may take to agree after `redis-cli --cluster create`.
pub const CLUSTER_OK_TIMEOUT_MS: u64 = 30_000;
/// How long a replica may take to be promoted after its primary was killed (node timeout
/// 1 s, then the election).
pub const FAILOVER_TIMEOUT_MS: u64 = 30_000;
/// `cluster-node-timeout`: a node silent this long is failing; short, so failovers are quick.
pub const NODE_TIMEOUT_MS: u64 = 1_000;
/// The address of every node of [`RedisCluster::start`].
const LOOPBACK: &str = "127.0.0.1";
/// Nodes in one test cluster, at most.
const NODES_LIMIT: usize = 12;
/// The cluster bus listens on the data port plus this.
const BUS_PORT_OFFSET: u16 = 10_000;

/// One node: its process, address and port.
struct Node {
    child: Proc,
    ip: String,
    port: u16,
}

pub struct RedisCluster {
    nodes: Vec<Node>,
    dir: tempfile::TempDir,
    node_timeout_ms: u64,
}

/// A port free on `ip`, whose cluster bus port (+10000) is free too, and not in `taken`.
fn free_node_port(ip: &str, taken: &[u16]) -> u16 {
    for _ in 0..100 {
        let port = TcpListener::bind((ip, 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("bind an ephemeral port on {ip}: {e}"));
        if port < u16::MAX - BUS_PORT_OFFSET
            && !taken.contains(&port)
            && TcpListener::bind((ip, port + BUS_PORT_OFFSET)).is_ok()
        {
            return port;
        }
    }
    panic!("no free port p on {ip} with p + {BUS_PORT_OFFSET} free too, in 100 tries");
}

/// A plain connection to the node at `addr` (`host:port`), with short timeouts (for polling).
pub fn conn_to(addr: &str) -> redis::RedisResult<redis::Connection> {
    let conn = redis::Client::open(format!("redis://{addr}"))?
        .get_connection_with_timeout(Duration::from_millis(500))?;
    conn.set_read_timeout(Some(Duration::from_millis(2_000)))?;
    Ok(conn)
}

/// A plain connection to a node of a [`RedisCluster::start`] cluster (on 127.0.0.1).
pub fn node_conn(port: u16) -> redis::RedisResult<redis::Connection> {
    conn_to(&format!("{LOOPBACK}:{port}"))
}

/// The `field:value` lines of an INFO-like reply.
fn info_field(text: &str, field: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
}

impl RedisCluster {
    /// `primaries` primaries with `replicas_per_primary` replicas each, every slot assigned,
    /// every node agreeing.
    pub fn start(primaries: usize, replicas_per_primary: usize) -> RedisCluster {
        let count = primaries * (1 + replicas_per_primary);
        let ips = vec![LOOPBACK.to_string(); count];
        RedisCluster::start_on_addresses(primaries, replicas_per_primary, &ips, NODE_TIMEOUT_MS)
    }

    /// As [`RedisCluster::start`], node `i` on `ips[i]` (one per node), with
    /// `cluster-node-timeout` `node_timeout_ms`. Which nodes become primaries is
    /// `redis-cli --cluster create`'s choice: ask [`RedisCluster::primary_ports`].
    pub fn start_on_addresses(
        primaries: usize,
        replicas_per_primary: usize,
        ips: &[String],
        node_timeout_ms: u64,
    ) -> RedisCluster {
        let count = primaries * (1 + replicas_per_primary);
        assert!(
            primaries >= 3 && count <= NODES_LIMIT && ips.len() == count,
            "redis-cli --cluster create needs 3 primaries or more; at most {NODES_LIMIT} nodes, \
             one address each"
        );
        let mut cluster = RedisCluster {
            nodes: Vec::with_capacity(count),
            dir: tempfile::tempdir().expect("temporary folder for the cluster"),
            node_timeout_ms,
        };
        for ip in ips {
            let node = cluster.spawn_node(ip);
            cluster.nodes.push(node);
        }
        cluster.create(replicas_per_primary);
        cluster.wait_ok(CLUSTER_OK_TIMEOUT_MS);
        cluster.wait_replicas_linked(primaries * replicas_per_primary);
        cluster
    }

    /// A node on `ip` and a free port, answering PING; retried on another port when the port
    /// was taken in between.
    fn spawn_node(&self, ip: &str) -> Node {
        let taken: Vec<u16> = self.nodes.iter().map(|n| n.port).collect();
        for _ in 0..5 {
            let port = free_node_port(ip, &taken);
            if let Some(child) = self.spawn_on(ip, port) {
                return Node {
                    child,
                    ip: ip.to_string(),
                    port,
                };
            }
        }
        panic!("no cluster node started on {ip} on any of 5 free ports");
    }

    fn spawn_on(&self, ip: &str, port: u16) -> Option<Proc> {
        let bin = find_binary(
            "REDIS_SERVER_BIN",
            "redis-server",
            "apt-get install -y redis-server",
        );
        let node_dir = self.dir.path().join(port.to_string());
        std::fs::create_dir_all(&node_dir).expect("node folder");
        let mut cmd = Command::new(bin);
        cmd.args(["--port", &port.to_string(), "--bind", ip])
            .args(["--cluster-announce-ip", ip, "--bind-source-addr", ip])
            // Protected mode lets only 127.0.0.1 and ::1 in without a password, so nodes on
            // other loopback addresses could not replicate; every address here is loopback.
            .args(["--protected-mode", "no"])
            .args(["--dir", node_dir.to_str().expect("utf-8 temp path")])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", "nodes.conf"])
            .args(["--cluster-node-timeout", &self.node_timeout_ms.to_string()]);
        log_to(&mut cmd, &node_dir.join("redis.log"));
        let mut child = Proc::spawn(&mut cmd, "redis-server (cluster node)");
        let deadline = Instant::now() + Duration::from_millis(START_TIMEOUT_MS);
        loop {
            if child.exited().is_some() {
                return None;
            }
            let pong = conn_to(&format!("{ip}:{port}"))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_ok();
            if pong {
                return Some(child);
            }
            assert!(
                Instant::now() < deadline,
                "cluster node on port {port} did not answer within {START_TIMEOUT_MS} ms"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis-cli --cluster create` over every node.
    fn create(&self, replicas_per_primary: usize) {
        let bin = find_binary(
            "REDIS_CLI_BIN",
            "redis-cli",
            "apt-get install -y redis-tools",
        );
        let out = Command::new(bin)
            .arg("--cluster")
            .arg("create")
            .args(self.nodes.iter().map(|n| self.addr(n.port)))
            .args(["--cluster-replicas", &replicas_per_primary.to_string()])
            .arg("--cluster-yes")
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Waits until every running node says `cluster_state:ok`, all slots assigned, and knows
    /// every running node.
    pub fn wait_ok(&self, timeout_ms: u64) {
        let ports = self.ports();
        wait_until("cluster_state:ok on every node", timeout_ms, || {
            ports.iter().all(|&port| {
                let info = self.cluster_info(port).unwrap_or_default();
                info_field(&info, "cluster_state").as_deref() == Some("ok")
                    && info_field(&info, "cluster_slots_assigned").as_deref() == Some("16384")
            })
        });
    }

    /// Waits until `count` replicas have their replication link up.
    pub fn wait_replicas_linked(&self, count: usize) {
        wait_until(
            "every replica linked to its primary",
            CLUSTER_OK_TIMEOUT_MS,
            || {
                let linked = self
                    .ports()
                    .into_iter()
                    .filter(|&port| {
                        let info = self.info(port, "replication").unwrap_or_default();
                        info_field(&info, "role").as_deref() == Some("slave")
                            && info_field(&info, "master_link_status").as_deref() == Some("up")
                    })
                    .count();
                linked == count
            },
        );
    }

    /// What node `port` says its `cluster_state` is (`ok`, `fail`); `None` when it does not
    /// answer.
    pub fn cluster_state(&self, port: u16) -> Option<String> {
        info_field(&self.cluster_info(port).ok()?, "cluster_state")
    }

    fn cluster_info(&self, port: u16) -> redis::RedisResult<String> {
        redis::cmd("CLUSTER")
            .arg("INFO")
            .query(&mut self.try_conn(port)?)
    }

    fn info(&self, port: u16, section: &str) -> redis::RedisResult<String> {
        redis::cmd("INFO")
            .arg(section)
            .query(&mut self.try_conn(port)?)
    }

    /// `IP:PORT` of the node on `port`.
    pub fn addr(&self, port: u16) -> String {
        format!("{}:{port}", self.ip(port))
    }

    /// The address the node on `port` listens on and connects from.
    pub fn ip(&self, port: u16) -> &str {
        &self.node(port).ip
    }

    /// A plain connection to the node on `port`, with short timeouts, or the error.
    pub fn try_conn(&self, port: u16) -> redis::RedisResult<redis::Connection> {
        conn_to(&self.addr(port))
    }

    /// Ports of the nodes still running.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_held())
            .map(|n| n.port)
            .collect()
    }

    /// `IP:PORT` of every running node, for `ClusterPools::connect`.
    pub fn seeds(&self) -> Vec<String> {
        self.ports().into_iter().map(|p| self.addr(p)).collect()
    }

    /// Runs `wallet ARGS --redis-cluster SEEDS` (no cluster or URL from the environment), its
    /// log at the binary's default level (info) whatever `RUST_LOG` the tests run with.
    pub fn wallet(&self, args: &[&str]) -> std::process::Output {
        Command::new(super::stack::WALLET_BIN)
            .args(args)
            .args([
                "--redis-cluster",
                &self.seeds().join(","),
                "--redis-url",
                "redis://",
            ])
            .env_remove("REDIS_CLUSTER")
            .env_remove("REDIS_URL")
            .env("RUST_LOG", "info")
            .output()
            .expect("run wallet")
    }

    /// A plain connection to the node on `port`.
    pub fn conn(&self, port: u16) -> redis::Connection {
        self.try_conn(port)
            .unwrap_or_else(|e| panic!("connect to cluster node {port}: {e}"))
    }

    /// The node's id (`CLUSTER MYID`).
    pub fn node_id(&self, port: u16) -> String {
        redis::cmd("CLUSTER")
            .arg("MYID")
            .query(&mut self.conn(port))
            .expect("CLUSTER MYID")
    }

    /// The port of the primary that serves `slot`, as the running node `asked` sees it
    /// (`CLUSTER SHARDS` would do too; `CLUSTER NODES` works on every Redis 7).
    pub fn owner_of(&self, asked: u16, slot: u16) -> Option<u16> {
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query(&mut self.try_conn(asked).ok()?)
            .ok()?;
        nodes.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let primary = fields.get(2)?.contains("master") && !fields[2].contains("fail");
            let serves = fields.iter().skip(8).any(|r| slot_in(r, slot));
            if !(primary && serves) {
                return None;
            }
            let port = fields[1].split(['@', ',']).next()?.rsplit_once(':')?.1;
            port.parse().ok()
        })
    }

    /// Deletes every key on every primary (FLUSHALL, replicated), so the next bed on this
    /// cluster starts from nothing.
    pub fn flush(&self) {
        for port in self.primary_ports() {
            redis::cmd("FLUSHALL")
                .query::<()>(&mut self.conn(port))
                .expect("FLUSHALL");
        }
    }

    /// Ports of the running primaries (nodes whose `ROLE` is master).
    pub fn primary_ports(&self) -> Vec<u16> {
        self.ports()
            .into_iter()
            .filter(|&port| {
                let info = self.info(port, "replication").unwrap_or_default();
                info_field(&info, "role").as_deref() == Some("master")
            })
            .collect()
    }

    /// The running replica of the primary on `port`.
    pub fn replica_of(&self, port: u16) -> Option<u16> {
        let id = self.node_id(port);
        self.ports().into_iter().find(|&p| {
            let nodes: String = redis::cmd("CLUSTER")
                .arg("NODES")
                .query(&mut self.conn(p))
                .unwrap_or_default();
            nodes.lines().any(|l| {
                l.contains("myself") && l.contains("slave") && l.split(' ').nth(3) == Some(&id)
            })
        })
    }

    /// SIGKILL for the node on `port`; it is not started again.
    pub fn kill(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no cluster node on port {port}"));
        node.child.kill();
    }

    /// SIGSTOP for the node on `port`: it keeps its connections but answers nothing, so a
    /// primary whose replica is paused gets no acknowledgement for `WAIT` (a replica cut off,
    /// without the cut). [`RedisCluster::resume`] sends SIGCONT; the SIGKILL on drop ends a
    /// paused node too.
    pub fn pause(&self, port: u16) {
        self.node(port).child.signal("STOP");
    }

    /// SIGCONT for a node paused by [`RedisCluster::pause`].
    pub fn resume(&self, port: u16) {
        self.node(port).child.signal("CONT");
    }

    fn node(&self, port: u16) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no cluster node on port {port}"))
    }

    /// Starts the killed node on `port` again, with its cluster config (`nodes.conf`) and no
    /// data: the cluster makes it a replica of the node that took its slots.
    pub fn start_again(&mut self, port: u16) {
        let ip = self.ip(port).to_string();
        let child = self
            .spawn_on(&ip, port)
            .unwrap_or_else(|| panic!("cluster node on port {port} did not start again"));
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no cluster node on port {port}"));
        node.child = child;
    }

    /// Waits until the replica on `replica_port` says it is a primary and every running node
    /// says `cluster_state:ok` again.
    pub fn wait_for_promotion(&self, replica_port: u16) {
        wait_until(
            &format!("the replica on {replica_port} to be promoted"),
            FAILOVER_TIMEOUT_MS,
            || self.primary_ports().contains(&replica_port),
        );
        self.wait_ok(FAILOVER_TIMEOUT_MS);
    }

    /// First step of a slot migration: `to` imports `slot`, `from` migrates it. From now on
    /// `from` answers ASK for keys of the slot it no longer holds.
    pub fn begin_migration(&self, slot: u16, from: u16, to: u16) {
        let setslot = |port: u16, state: &str, other: u16| {
            redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg(state)
                .arg(self.node_id(other))
                .query::<()>(&mut self.conn(port))
                .unwrap_or_else(|e| panic!("CLUSTER SETSLOT {slot} {state} on {port}: {e}"));
        };
        setslot(to, "IMPORTING", from);
        setslot(from, "MIGRATING", to);
    }

    /// Moves `keys` (all in a slot being migrated) from `from` to `to` with MIGRATE.
    pub fn migrate_keys(&self, from: u16, to: u16, keys: &[&str]) {
        redis::cmd("MIGRATE")
            .arg(self.ip(to))
            .arg(to)
            .arg("")
            .arg(0)
            .arg(5_000)
            .arg("KEYS")
            .arg(keys)
            .query::<String>(&mut self.conn(from))
            .unwrap_or_else(|e| panic!("MIGRATE {keys:?} from {from} to {to}: {e}"));
    }

    /// Last step: `slot` belongs to `to`, told to every running primary; waits until all
    /// nodes agree (cluster_state ok).
    pub fn end_migration(&self, slot: u16, to: u16) {
        let owner = self.node_id(to);
        for port in std::iter::once(to).chain(self.primary_ports()) {
            redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg("NODE")
                .arg(&owner)
                .query::<()>(&mut self.conn(port))
                .unwrap_or_else(|e| panic!("CLUSTER SETSLOT {slot} NODE on {port}: {e}"));
        }
        let ports = self.ports();
        wait_until(
            &format!("every node to see slot {slot} on {to}"),
            CLUSTER_OK_TIMEOUT_MS,
            || ports.iter().all(|&p| self.owner_of(p, slot) == Some(to)),
        );
    }

    /// Every key matching `pattern` on every running primary, of type `type_` when given,
    /// with the primary's port; sorted, each once.
    pub fn scan_primaries(&self, pattern: &str, type_: Option<&str>) -> Vec<(u16, String)> {
        let mut found: Vec<(u16, String)> = self
            .primary_ports()
            .into_iter()
            .flat_map(|port| {
                let keys = super::scan(&mut self.conn(port), pattern, type_);
                keys.into_iter().map(move |k| (port, k))
            })
            .collect();
        found.sort();
        found.dedup();
        found
    }

    /// The log of the node on `port`.
    pub fn log(&self, port: u16) -> String {
        std::fs::read_to_string(self.dir.path().join(port.to_string()).join("redis.log"))
            .unwrap_or_default()
    }
}

impl super::TestRedis for RedisCluster {
    fn key_space(&self) -> KeySpace {
        KeySpace::Cluster
    }

    /// Grouped by slot, each slot's owner asked of the running nodes (`CLUSTER NODES`).
    fn conns_for(
        &self,
        keys: Vec<String>,
    ) -> redis::RedisResult<Vec<(redis::Connection, Vec<String>)>> {
        let mut by_slot: BTreeMap<u16, Vec<String>> = BTreeMap::new();
        for key in keys {
            by_slot
                .entry(hash_slot(key.as_bytes()))
                .or_default()
                .push(key);
        }
        let mut by_owner: BTreeMap<u16, Vec<String>> = BTreeMap::new();
        for (slot, keys) in by_slot {
            let owner = self
                .ports()
                .into_iter()
                .find_map(|asked| self.owner_of(asked, slot))
                .ok_or_else(|| {
                    redis::RedisError::from((redis::ErrorKind::Client, "slot without an owner"))
                })?;
            by_owner.entry(owner).or_default().extend(keys);
        }
        by_owner
            .into_iter()
            .map(|(port, keys)| Ok((self.try_conn(port)?, keys)))
            .collect()
    }
}

/// True when a `CLUSTER NODES` slot field (`5`, `0-5460`; `[...]` migration notes are not
/// ranges) holds `slot`.
fn slot_in(field: &str, slot: u16) -> bool {
    if field.starts_with('[') {
        return false;
    }
    let (start, end) = field.split_once('-').unwrap_or((field, field));
    match (start.parse::<u16>(), end.parse::<u16>()) {
        (Ok(s), Ok(e)) => s <= slot && slot <= e,
        _ => false,
    }
}
