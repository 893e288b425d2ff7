//! A request older than the outcome ttl (`engine::expiry`), on every topology: one Redis, and a
//! 3-primary Redis Cluster with the wallets in one slot and in two. With no outcome recorded
//! it is answered FAILED `expired` and nothing is written; with one recorded it is answered
//! from the record; a fresh one is applied. The worker's end of it (a group rewound after
//! the records expired) is in `semantics::`.

use wallet_transfer::engine::expiry;
use wallet_transfer::{
    Amount, Currency, EngineConfig, FailureReason, NewWallet, Status, TransferRequest,
    WalletService,
};

use crate::cluster_transfer::pair;
use crate::support::RedisServer;
use crate::support::cluster::RedisCluster;

/// Records live an hour: a request an hour and a minute old is past it.
const TTL_MS: u64 = 3_600_000;

fn amount(text: &str) -> Amount {
    Amount::parse(text).expect("an amount")
}

/// The checks on one service: an old request with no record is refused and writes nothing;
/// the same key fresh is applied; the old one again is answered from that record.
fn an_old_request_is_applied_only_through_its_record(service: &WalletService, tag: &str) {
    let (from, to) = pair(tag, tag.ends_with("same"));
    let wallets = [&from, &to].map(|id| NewWallet::new(id, amount("10.00"), Currency::USD));
    assert_eq!(service.create_wallets(&wallets).unwrap(), 2);
    let now = expiry::now_ms();
    let old_at = now - TTL_MS - 60_000;
    let request = TransferRequest::new(&format!("{tag}_tx"), &from, &to, "1.00", Currency::USD)
        .expect("a valid request");
    let old = request.clone().with_requested_at_ms(old_at);
    let refused = service.transfer(&old).expect("answered");
    assert_eq!(
        (refused.status, refused.reason),
        (Status::Failed, Some(FailureReason::Expired)),
        "{tag}"
    );
    // Refused under its locks, the answer reports what it cost like any other.
    let cost = refused.stats;
    assert!(
        cost.lock.attempts == 1 && cost.round_trips >= 1,
        "{tag}: {cost:?}"
    );
    let record = service
        .transfer_outcome_of(&from, &request.idempotency_key)
        .unwrap();
    assert!(
        record.is_none(),
        "{tag}: an expired request wrote {record:?}"
    );
    assert_eq!(service.balance(&from).unwrap(), amount("10.00"), "{tag}");
    assert_eq!(service.balance(&to).unwrap(), amount("10.00"), "{tag}");

    let fresh = service
        .transfer(&request.clone().with_requested_at_ms(now))
        .unwrap();
    assert_eq!(fresh.status, Status::Completed, "{tag}");
    let again = service.transfer(&old).expect("answered");
    assert_eq!(
        (again.status, again.duplicate),
        (Status::Completed, true),
        "{tag}: an old request whose record exists is answered from it"
    );
    assert_eq!(service.balance(&from).unwrap(), amount("9.00"), "{tag}");
    assert_eq!(service.balance(&to).unwrap(), amount("11.00"), "{tag}");
    assert!(
        service.history(&to).unwrap().len() == 1,
        "{tag}: one credit"
    );
}

fn config() -> EngineConfig {
    EngineConfig::default().with_outcome_ttl_ms(Some(TTL_MS))
}

#[test]
fn an_old_request_is_refused_unless_recorded_on_one_redis() {
    let redis = RedisServer::start();
    let service = WalletService::connect(&redis.url(), 4, config()).unwrap();
    an_old_request_is_applied_only_through_its_record(&service, "one");
}

#[test]
fn an_old_request_is_refused_unless_recorded_on_a_cluster_in_one_slot_and_across_slots() {
    let redis = RedisCluster::start(3, 0);
    let service = WalletService::connect_cluster(&redis.seeds(), "redis://", 8, config()).unwrap();
    an_old_request_is_applied_only_through_its_record(&service, "c_same");
    an_old_request_is_applied_only_through_its_record(&service, "c_cross");
}

/// Records kept for ever (no ttl): however old a request is, it is applied.
#[test]
fn without_an_outcome_ttl_no_request_is_too_old() {
    let redis = RedisServer::start();
    let service = WalletService::connect(&redis.url(), 4, EngineConfig::default()).unwrap();
    let wallets = ["nt_a", "nt_b"].map(|id| NewWallet::new(id, amount("5.00"), Currency::USD));
    service.create_wallets(&wallets).unwrap();
    let request = TransferRequest::new("nt_tx", "nt_a", "nt_b", "1.00", Currency::USD)
        .unwrap()
        .with_requested_at_ms(0);
    assert_eq!(
        service.transfer(&request).unwrap().status,
        Status::Completed
    );
}
