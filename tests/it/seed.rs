//! The seeder against a real redis-server: never overwrites a wallet; `--reset` clears the data
//! model and nothing else.

use crate::support::RedisServer;
use wallet_transfer::tools::seed;
use wallet_transfer::{Amount, EngineConfig};

#[test]
fn seeding_creates_once_keeps_changes_and_reset_clears_only_the_data_model() {
    let redis = RedisServer::start();
    let service = redis.service(2, EngineConfig::default());
    let first = seed::seed(&service, 50, false, Some(1)).unwrap();
    assert_eq!((first.created, first.skipped, first.deleted), (50, 0, None));
    let wallet = service.wallet("user_7").unwrap().expect("seeded");
    assert!(wallet.balance >= Amount::parse("100.00").unwrap());
    assert!(wallet.balance <= Amount::parse("10000.00").unwrap());
    assert_eq!(wallet.balance, wallet.opening_balance);

    // A changed wallet survives a second seed untouched.
    service
        .deposit("user_7", Amount::parse("1.00").unwrap())
        .unwrap();
    let changed = service.balance("user_7").unwrap();
    let second = seed::seed(&service, 60, false, Some(2)).unwrap();
    assert_eq!((second.created, second.skipped), (10, 50));
    assert_eq!(service.balance("user_7").unwrap(), changed);

    let mut conn = redis.conn();
    redis::cmd("SET")
        .arg("unrelated")
        .arg("x")
        .query::<()>(&mut conn)
        .unwrap();
    let reset = seed::seed(&service, 5, true, Some(3)).unwrap();
    // 60 users + 60 wallets + user_7's history + the two sets.
    assert_eq!(reset.deleted, Some(60 + 60 + 1 + 2));
    assert_eq!(reset.created, 5);
    assert!(service.wallet("user_7").unwrap().is_none());
    let kept: Option<String> = redis::cmd("GET").arg("unrelated").query(&mut conn).unwrap();
    assert_eq!(kept.as_deref(), Some("x"));
}
