//! The Redis Cluster foundation (`engine::cluster`) against real clusters of `redis-server`
//! processes (`support::cluster`): slots as Redis computes them, the slot map, routing by key,
//! MOVED and ASK during a slot migration, and a primary's failover.

use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng};
use wallet_transfer::engine::cluster::{
    self, ClusterError, ClusterPools, Redirect, RedirectKind, SLOT_COUNT, hash_slot, keys,
};
use wallet_transfer::engine::store::RedisTls;

use crate::support::cluster::{FAILOVER_TIMEOUT_MS, RedisCluster};

const POOL_SIZE: u32 = 2;

fn connect(seeds: &[String]) -> ClusterPools {
    ClusterPools::connect(seeds, "redis://", &RedisTls::default(), POOL_SIZE)
        .expect("connect to the test cluster")
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':').unwrap().1.parse().unwrap()
}

fn get(pools: &ClusterPools, key: &str) -> Result<Option<String>, redis::RedisError> {
    let mut conn = pools.conn_for_key(key).expect("a connection for the key");
    cluster::query(&mut conn, redis::cmd("GET").arg(key))
}

/// Random keys (bytes 0..=255, braces often), the tag edge cases, and the cluster-mode key
/// names: `hash_slot` gives what `CLUSTER KEYSLOT` gives for every one.
#[test]
fn hash_slot_agrees_with_cluster_keyslot() {
    const RANDOM_KEYS: usize = 3_000;
    let redis = RedisCluster::start(3, 0);
    let seed: u64 = rand::random();
    println!("keyslot seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let alphabet = b"{}ab:_-0\x00\xff";
    let mut keys: Vec<Vec<u8>> = (0..RANDOM_KEYS)
        .map(|i| {
            let len = rng.random_range(0..24);
            (0..len)
                .map(|_| match i % 2 {
                    0 => alphabet[rng.random_range(0..alphabet.len())],
                    _ => rng.random_range(0..=255u8),
                })
                .collect()
        })
        .collect();
    for edge in [
        "", "{}", "{", "}", "}{", "{}{x}", "a{b}c{d}", "{{x}}", "x{}", "{x", "x}",
    ] {
        keys.push(edge.as_bytes().to_vec());
    }
    for id in ["user_1", "w-42", "A"] {
        for key in [keys::wallet(id), keys::lock(id), keys::outcome(id, "k:1")] {
            keys.push(key.into_bytes());
        }
    }
    let mut pipe = redis::pipe();
    for key in &keys {
        pipe.cmd("CLUSTER").arg("KEYSLOT").arg(key.as_slice());
    }
    let mut conn = redis.conn(redis.ports()[0]);
    let slots: Vec<u16> = pipe
        .query(&mut conn)
        .expect("CLUSTER KEYSLOT for every key");
    let wrong: Vec<_> = keys
        .iter()
        .zip(&slots)
        .filter(|(key, slot)| hash_slot(key) != **slot)
        .map(|(key, slot)| {
            (
                String::from_utf8_lossy(key).into_owned(),
                *slot,
                hash_slot(key),
            )
        })
        .take(5)
        .collect();
    assert!(wrong.is_empty(), "(key, Redis's slot, ours): {wrong:?}");
    let distinct: std::collections::HashSet<_> = slots.iter().collect();
    assert!(distinct.len() > 1_000, "random keys spread over the slots");
}

/// The map read from one seed covers all 16384 slots with the 3 primaries the cluster really
/// has, each range on the node that serves it; keys written through `conn_for_key` (no
/// redirect: the routing is right for every primary) read back through fresh pools from
/// another seed.
#[test]
fn the_map_covers_every_slot_and_routes_keys_to_their_primary() {
    let redis = RedisCluster::start(3, 0);
    let seeds = redis.seeds();
    let pools = connect(&seeds[..1]);
    let map = pools.slot_map();
    assert!(map.covers_all_slots(), "{map:?}");
    assert_eq!(map.slots_covered(), u32::from(SLOT_COUNT));
    let mut primaries: Vec<u16> = pools.primaries().iter().map(|a| port_of(a)).collect();
    primaries.sort();
    let mut real = redis.primary_ports();
    real.sort();
    assert_eq!(primaries, real);
    for range in map.ranges() {
        for slot in [range.start, range.end] {
            assert_eq!(redis.owner_of(real[0], slot), Some(port_of(&range.primary)));
        }
    }
    let ids: Vec<String> = (0..200).map(|i| format!("user_{i}")).collect();
    let mut used = std::collections::HashSet::new();
    for id in &ids {
        let key = keys::wallet(id);
        used.insert(pools.primary_for_slot(hash_slot(key.as_bytes())).unwrap());
        let mut conn = pools.conn_for_key(&key).expect("connection");
        cluster::query::<()>(&mut conn, redis::cmd("SET").arg(&key).arg(id))
            .unwrap_or_else(|e| panic!("SET {key} on its primary: {e}"));
    }
    assert_eq!(used.len(), 3, "200 wallets land on every primary");
    let fresh = connect(&seeds[2..]);
    for id in &ids {
        assert_eq!(
            get(&fresh, &keys::wallet(id)).unwrap().as_deref(),
            Some(id.as_str())
        );
    }
}

/// A seed that is down is skipped; when every seed is down the error names each and says
/// what to do.
#[test]
fn connect_skips_dead_seeds_and_says_when_none_answers() {
    let redis = RedisCluster::start(3, 0);
    let dead = format!("127.0.0.1:{}", crate::support::free_port());
    let pools = connect(&[dead.clone(), redis.seeds()[1].clone()]);
    assert!(pools.slot_map().covers_all_slots());
    let e =
        ClusterPools::connect(&[dead.as_str()], "redis://", &RedisTls::default(), 1).unwrap_err();
    assert!(matches!(e, ClusterError::NoMap { asked: 1, .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains(&dead) && text.contains("redis-cli --cluster check"),
        "{text}"
    );
    assert!(e.is_transient());
}

/// While a slot migrates, the old owner answers ASK for a key already moved (and the new
/// owner serves it after ASKING, MOVED without); once the slot is handed over the old owner
/// answers MOVED; `refresh()` then routes the key to the new owner.
#[test]
fn a_migrating_slot_gives_ask_then_moved_and_refresh_follows_it() {
    let redis = RedisCluster::start(3, 0);
    let pools = connect(&redis.seeds());
    let (moved_key, staying_key) = ("{migrating}a", "{migrating}b");
    let slot = hash_slot(b"{migrating}");
    let from = pools.primary_for_slot(slot).unwrap();
    let to = pools.primaries().into_iter().find(|p| *p != from).unwrap();
    for key in [moved_key, staying_key] {
        let mut conn = pools.conn_for_key(key).unwrap();
        cluster::query::<()>(&mut conn, redis::cmd("SET").arg(key).arg(key)).unwrap();
    }
    redis.begin_migration(slot, port_of(&from), port_of(&to));
    redis.migrate_keys(port_of(&from), port_of(&to), &[moved_key]);

    // The old owner still serves the key it holds, and sends the moved one on with ASK.
    assert_eq!(
        get(&pools, staying_key).unwrap().as_deref(),
        Some(staying_key)
    );
    let ask = get(&pools, moved_key).expect_err("ASK for a key already migrated");
    let redirect = Redirect::parse(&ask).unwrap_or_else(|| panic!("not a redirect: {ask:?}"));
    assert_eq!(
        (redirect.kind, redirect.slot),
        (RedirectKind::Ask, slot),
        "{ask:?}"
    );
    assert_eq!(redirect.addr, to);
    let mut target = pools.conn_for_addr(&redirect.addr).unwrap();
    let without_asking =
        cluster::query::<Option<String>>(&mut target, redis::cmd("GET").arg(moved_key))
            .expect_err("the importing node redirects a plain GET back");
    let back = Redirect::parse(&without_asking).unwrap();
    assert_eq!(
        (back.kind, back.slot, back.addr.as_str()),
        (RedirectKind::Moved, slot, from.as_str())
    );
    cluster::asking(&mut target).unwrap();
    let value: Option<String> =
        cluster::query(&mut target, redis::cmd("GET").arg(moved_key)).unwrap();
    assert_eq!(value.as_deref(), Some(moved_key));
    drop(target);

    redis.migrate_keys(port_of(&from), port_of(&to), &[staying_key]);
    redis.end_migration(slot, port_of(&to));
    let moved = get(&pools, moved_key).expect_err("MOVED from the old owner");
    let redirect = Redirect::parse(&moved).unwrap_or_else(|| panic!("not a redirect: {moved:?}"));
    assert_eq!(
        redirect,
        Redirect {
            kind: RedirectKind::Moved,
            slot,
            addr: to.clone()
        }
    );

    let refreshed = pools.refresh().expect("refresh after MOVED");
    assert!(
        refreshed.added.is_empty() && refreshed.removed.is_empty(),
        "{refreshed:?}"
    );
    assert_eq!(pools.primary_for_slot(slot), Some(to.clone()));
    for key in [moved_key, staying_key] {
        assert_eq!(get(&pools, key).unwrap().as_deref(), Some(key));
    }
    assert_eq!(
        pools.primary_for_slot(slot + 1),
        Some(from),
        "only the one slot moved"
    );
}

/// SIGKILL for the primary of a key (1 replica each, the key replicated with WAIT):
/// `refresh()`, retried until a deadline, finds the promoted replica, drops the dead node's
/// pool, and the key reads back from the new primary.
#[test]
fn after_a_primary_is_killed_refresh_finds_the_promoted_replica() {
    let mut redis = RedisCluster::start(3, 1);
    let pools = connect(&redis.seeds());
    let key = keys::wallet("survivor");
    let slot = hash_slot(key.as_bytes());
    let mut conn = pools.conn_for_key(&key).unwrap();
    cluster::query::<()>(&mut conn, redis::cmd("SET").arg(&key).arg("42")).unwrap();
    let copies: i64 = cluster::query(&mut conn, redis::cmd("WAIT").arg(1).arg(5_000)).unwrap();
    assert_eq!(copies, 1, "the replica has the key before its primary dies");
    drop(conn);
    let dead = pools.primary_for_slot(slot).unwrap();
    let replica = redis
        .replica_of(port_of(&dead))
        .expect("the primary has a replica");
    redis.kill(port_of(&dead));

    let deadline = Instant::now() + Duration::from_millis(FAILOVER_TIMEOUT_MS);
    let mut attempts = 0;
    let refreshed = loop {
        attempts += 1;
        match pools.refresh() {
            Ok(r) if pools.primary_for_slot(slot).as_deref() != Some(dead.as_str()) => break r,
            Ok(_) => {}
            Err(e) => assert!(e.is_transient(), "a refresh error during failover: {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "no promoted replica in the map after {attempts} refreshes; log of {replica}: {}",
            redis.log(replica)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let promoted = pools.primary_for_slot(slot).unwrap();
    assert_eq!(port_of(&promoted), replica);
    assert_eq!(refreshed.added, std::slice::from_ref(&promoted));
    assert_eq!(refreshed.removed, std::slice::from_ref(&dead));
    assert!(!pools.primaries().contains(&dead));
    assert_eq!(get(&pools, &key).unwrap().as_deref(), Some("42"));
    redis.wait_for_promotion(replica);
    println!("failover seen after {attempts} refreshes");
}
