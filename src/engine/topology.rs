//! Where the keys live: one Redis (one shard) or a Redis Cluster (one shard per primary), as
//! one value the engine, the tools and the tests ask instead of branching on the mode.
//!
//! Owns the connections: the one for a key (the pool's on one Redis, its slot's primary on a
//! cluster), the list of shards with a label (the one Redis; every primary, sorted), the
//! grouping of keys by shard, and the key names (through [`KeySpace`]). Does not own the
//! algorithms that differ between the modes (the cross-slot steps in `cluster_transfer`), the
//! spellings of the keys (`keyspace`), or the slot map and its refresh (`cluster`).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::engine::cluster::{self, ClusterError, ClusterPools, NODES_LIMIT, Redirect};
use crate::engine::keyspace::KeySpace;
use crate::engine::store::{Pool, PooledConn};

/// Most shards a scan walks (a cluster's map holds at most [`NODES_LIMIT`] nodes).
pub const SHARDS_LIMIT: usize = NODES_LIMIT;

/// The label of the one shard of a one-Redis topology.
pub const ONE_REDIS_LABEL: &str = "redis";

/// One Redis or a Redis Cluster. Cheap to clone.
#[derive(Clone)]
pub struct Topology {
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    One(Pool),
    Cluster(Arc<ClusterPools>),
}

/// One shard: the one Redis, or one primary of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Shard {
    /// The primary's `host:port`; `None` for the one Redis.
    addr: Option<String>,
}

impl Shard {
    /// `host:port` of a cluster primary, [`ONE_REDIS_LABEL`] for the one Redis.
    pub fn label(&self) -> &str {
        self.addr.as_deref().unwrap_or(ONE_REDIS_LABEL)
    }

    /// The primary's `host:port`; `None` for the one Redis.
    pub fn addr(&self) -> Option<&str> {
        self.addr.as_deref()
    }
}

impl Topology {
    /// One Redis behind `pool`.
    pub fn one(pool: Pool) -> Topology {
        Topology {
            inner: Inner::One(pool),
        }
    }

    /// A Redis Cluster behind `pools`.
    pub fn cluster(pools: Arc<ClusterPools>) -> Topology {
        Topology {
            inner: Inner::Cluster(pools),
        }
    }

    /// The key names written on this topology.
    pub fn key_space(&self) -> KeySpace {
        match self.inner {
            Inner::One(_) => KeySpace::Standalone,
            Inner::Cluster(_) => KeySpace::Cluster,
        }
    }

    /// The pool of the one Redis; `None` on a cluster.
    pub fn one_pool(&self) -> Option<&Pool> {
        match &self.inner {
            Inner::One(pool) => Some(pool),
            Inner::Cluster(_) => None,
        }
    }

    /// The cluster's pools and slot map; `None` on one Redis.
    pub fn cluster_pools(&self) -> Option<&Arc<ClusterPools>> {
        match &self.inner {
            Inner::One(_) => None,
            Inner::Cluster(pools) => Some(pools),
        }
    }

    /// A connection to the Redis that holds `key`.
    pub fn conn_for_key<E>(&self, key: &str) -> Result<PooledConn, E>
    where
        E: From<r2d2::Error> + From<ClusterError>,
    {
        match &self.inner {
            Inner::One(pool) => Ok(pool.get()?),
            Inner::Cluster(pools) => Ok(pools.conn_for_key(key)?),
        }
    }

    /// Every shard, sorted by label (at most [`SHARDS_LIMIT`]): the one Redis, or each
    /// primary of the known slot map.
    pub fn shards(&self) -> Vec<Shard> {
        match &self.inner {
            Inner::One(_) => vec![Shard { addr: None }],
            Inner::Cluster(pools) => {
                let primaries = pools.primaries().into_iter().take(SHARDS_LIMIT);
                primaries.map(|addr| Shard { addr: Some(addr) }).collect()
            }
        }
    }

    /// A connection to `shard`.
    pub fn conn_for_shard<E>(&self, shard: &Shard) -> Result<PooledConn, E>
    where
        E: From<r2d2::Error> + From<ClusterError>,
    {
        match (&self.inner, shard.addr()) {
            (Inner::Cluster(pools), Some(addr)) => Ok(pools.conn_for_addr(addr)?),
            (Inner::One(pool), _) => Ok(pool.get()?),
            // A shard of a one-Redis topology handed to a cluster one: no node to go to.
            (Inner::Cluster(_), None) => Err(ClusterError::BadAddress {
                addr: ONE_REDIS_LABEL.to_string(),
            }
            .into()),
        }
    }

    /// The shard that holds `key` in the known map.
    pub fn shard_of_key(&self, key: &str) -> Result<Shard, ClusterError> {
        match &self.inner {
            Inner::One(_) => Ok(Shard { addr: None }),
            Inner::Cluster(pools) => {
                let slot = cluster::hash_slot(key.as_bytes());
                let addr = pools
                    .primary_for_slot(slot)
                    .ok_or(ClusterError::SlotUncovered(slot))?;
                Ok(Shard { addr: Some(addr) })
            }
        }
    }

    /// `items` grouped by the shard that holds `key_of(item)`, shards in label order, items
    /// in their order.
    pub fn by_shard<T>(
        &self,
        items: impl IntoIterator<Item = T>,
        key_of: impl Fn(&T) -> String,
    ) -> Result<BTreeMap<Shard, Vec<T>>, ClusterError> {
        let mut out: BTreeMap<Shard, Vec<T>> = BTreeMap::new();
        for item in items {
            let shard = self.shard_of_key(&key_of(&item))?;
            out.entry(shard).or_default().push(item);
        }
        Ok(out)
    }

    /// Reads a cluster's slot map again (after a failover, say); nothing on one Redis.
    pub fn refresh(&self) -> Result<(), ClusterError> {
        match &self.inner {
            Inner::One(_) => Ok(()),
            Inner::Cluster(pools) => pools.refresh().map(|_| ()),
        }
    }

    /// Whether `error` may come from a stale slot map, so that reading the map again and
    /// running the call again may succeed ([`cluster::map_may_be_stale`]); never on one Redis.
    pub fn map_may_be_stale(&self, error: &redis::RedisError) -> bool {
        matches!(self.inner, Inner::Cluster(_)) && cluster::map_may_be_stale(error)
    }

    /// After `error` from a command: a redirect means the known map is stale, so it is read
    /// again (best effort; the caller returns the error and its retry uses the new map).
    /// Nothing on one Redis.
    pub fn refresh_after(&self, error: &redis::RedisError) {
        if let Inner::Cluster(pools) = &self.inner
            && Redirect::parse(error).is_some()
        {
            let _ = pools.refresh();
        }
    }
}

impl std::fmt::Debug for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            Inner::One(_) => f.write_str("Topology::One"),
            Inner::Cluster(pools) => write!(f, "Topology::Cluster({pools:?})"),
        }
    }
}
