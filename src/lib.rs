//! Money moves between wallets held in Redis, exactly once per request and safe under any
//! concurrency: a blocking engine you can embed, the Kafka worker built on it, and the
//! `wallet` command line.
//!
//! Everything is synchronous: OS threads and blocking I/O, no async runtime. Amounts are
//! integer cents ([`Amount`]); a float never holds money. The Redis keys and the JSON on the
//! topics are those of the original Python system, so this crate can take over its data.
//!
//! # Which part to use
//!
//! - **The engine alone** ([`WalletService`]), when your program already has the request in
//!   hand: an HTTP handler, a batch job, another queue. You call [`WalletService::transfer`]
//!   and get the outcome back on the same thread. Depend on it without the default features;
//!   nothing of Kafka, OpenSSL, clap or an HTTP server is built:
//!
//!   ```toml
//!   [dependencies]
//!   wallet-transfer = { version = "0.1", default-features = false }
//!   ```
//!
//! - **The worker** (`worker::Worker`, feature `worker`, on by default), when requests come
//!   as Kafka messages and results must go back as Kafka messages: it consumes
//!   `wallet.transfer.requested`, runs each request through the engine, publishes one result
//!   per request on `wallet.transfer.completed`, and commits an offset only once its answer
//!   is acknowledged. Run it in your process with your own `worker::WorkerConfig` and stop it
//!   with its shutdown handle, or run the `wallet worker` binary.
//!
//! - **The tools** (`tools`, feature `tools`, on by default): the ledger audit, snapshots,
//!   the demo seeder, benchmarks and the race scenarios, as functions; the `wallet` binary
//!   needs this feature.
//!
//! The `examples/` folder has one program for each: `transfer.rs` (the engine in a blocking
//! program: a transfer, a replay, a business failure), `worker.rs` (a worker in-process with
//! its own config and a shutdown handle) and `audit.rs` (checking a ledger from code). Each
//! reads `REDIS_URL` (and `KAFKA_BROKERS`) from the environment.
//!
//! # A transfer
//!
//! ```no_run
//! use wallet_transfer::{Amount, Currency, EngineConfig, NewWallet, Status, TransferRequest, WalletService};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // One service per process: it holds the Redis pool. Clone it into threads.
//! let service = WalletService::connect("redis://127.0.0.1:6379", 4, EngineConfig::default())?;
//! for (id, balance) in [("alice", "100.00"), ("bob", "0")] {
//!     service.create_wallet(&NewWallet::new(id, Amount::parse(balance)?, Currency::USD))?;
//! }
//! let request = TransferRequest::new("tx_1", "alice", "bob", "40.50", Currency::USD)?;
//! let outcome = service.transfer(&request)?;
//! assert_eq!(outcome.status, Status::Completed);
//! // The same request again has no further effect: it is answered from the record.
//! assert!(service.transfer(&request)?.duplicate);
//! # Ok(())
//! # }
//! ```
//!
//! # Guarantees
//!
//! - **Exactly once per idempotency key.** The outcome of a request is recorded under its
//!   idempotency key (`transfer:{key}`) in the same Redis transaction as the balances and the
//!   history entries. Any later request with that key, however often and from however many
//!   processes, gets the recorded answer ([`TransferOutcome::duplicate`]) and moves nothing.
//!   The key defaults to the `transfer_id`; [`TransferRequest::with_idempotency_key`] sets
//!   another. A key reused for a *different* request is refused
//!   ([`TransferError::IdempotencyConflict`]) and the first record is left alone.
//! - **No overdraft, no lost update.** Funds are checked on balances read under `WATCH`; the
//!   write is one `MULTI`/`EXEC` that aborts if anything it read changed.
//! - **No deadlock.** The wallets' locks are taken in sorted order, all or none, with a ttl,
//!   and released on every path out (errors and panics included) after checking the owner.
//! - **Records do not expire** unless you set [`EngineConfig::outcome_ttl_ms`]: a replay at any
//!   time gets the original answer. With a ttl, the rule is yours to keep: **never retry or
//!   replay a request after its record's ttl**, or the money moves again. (The worker keeps it
//!   for you: its ttl covers the requests topic's retention plus a margin, so a record
//!   outlives every redelivery of its request.)
//! - **History is a window, balances stay exact.** A wallet keeps its last
//!   [`EngineConfig::history_max_entries`] history entries in Redis (1,000 by default); older
//!   ones are summed into its checkpoint in the same transaction
//!   (`engine::retention`), so `balance = opening + checkpoint + retained entries` still
//!   holds and the audit checks it. The worker also publishes every entry to the ledger
//!   topic; entries made through the library alone are gone from Redis once trimmed, so set
//!   `history_max_entries` to `None` if Redis is your only copy.
//! - **Redeliveries are not duplicates.** [`WalletService::transfer_from`] takes the Kafka
//!   message ([`engine::transfer::Origin`]) a request came in; a redelivery of that same
//!   message is answered as the original (`duplicate: false`). The worker uses it; without
//!   Kafka, use [`WalletService::transfer`], and a replay is always a duplicate.
//!
//! A deposit ([`WalletService::deposit`]) is atomic but has no idempotency key: calling it
//! twice deposits twice.
//!
//! # Configuration
//!
//! [`WalletService::connect`] takes the Redis URL (AUTH and TLS in it:
//! `rediss://user:password@host:6380/0`; errors never show the password), the pool size (a
//! transfer holds one connection for its whole run: size it to your calling threads) and an
//! [`EngineConfig`]. Its defaults are those of the `wallet` binary:
//!
//! | setting | default | meaning |
//! | --- | --- | --- |
//! | `lock.ttl_ms` | 10000 | how long a wallet lock lives if its holder dies |
//! | `lock.retry_delay_ms_base` | 100 | first wait before trying a taken lock again; doubles, plus jitter |
//! | `lock.retry_delay_ms_max` | 2000 | cap on one wait |
//! | `lock.retries_max` | 10 | retries before [`TransferError::LockTimeout`] |
//! | `watch_retries_max` | 16 | transactions aborted by concurrent changes before [`TransferError::WatchConflicts`] |
//! | `outcome_ttl_ms` | `None` | expiry of outcome records; `None` keeps them for ever (the worker derives one from the requests topic) |
//! | `history_max_entries` | `Some(1000)` | history entries a wallet keeps in Redis; `None` keeps all |
//! | `redis_tls` | none | CA, client certificate and key files for a `rediss://` URL ([`engine::RedisTls`]) |
//! | `wait_replicas` | `None` | replicas that must acknowledge each write (`WAIT n 1000`) before the transfer answers; fewer is [`TransferError::ReplicasBehind`] |
//!
//! Change them with the `with_*` setters; the config structs are `#[non_exhaustive]`, so a
//! struct literal does not compile outside this crate and a new setting never breaks yours:
//!
//! ```
//! use wallet_transfer::{EngineConfig, LockConfig};
//!
//! let config = EngineConfig::default()
//!     .with_lock(LockConfig::default().with_ttl_ms(5_000))
//!     .with_watch_retries_max(32);
//! assert!(config.validate().is_ok());
//! let bad = EngineConfig::default().with_lock(LockConfig::default().with_ttl_ms(0));
//! assert_eq!(bad.validate().unwrap_err().setting, "lock.ttl_ms");
//! ```
//!
//! A setting out of its range is a [`SettingError`] naming it (`lock.ttl_ms`), returned by
//! `connect` (as [`ServiceError::Config`]) before anything is opened. `wallet worker` also
//! checks at start that its Redis user has every permission the worker needs
//! ([`WalletService::check_permissions`]); an embedded worker should call it too. The worker's settings
//! are `worker::WorkerConfig`, built the same way.
//!
//! # Errors and retries
//!
//! A transfer has three kinds of result:
//!
//! 1. `Ok(outcome)` with [`Status::Completed`]: the money moved.
//! 2. `Ok(outcome)` with [`Status::Failed`] and a [`FailureReason`] (`insufficient_funds`,
//!    `wallet_not_found`, ...): a business answer, recorded like a success, so asking again
//!    gives the same answer. Not an error; do not retry it.
//! 3. `Err(`[`TransferError`]`)`: no answer. Ask [`TransferError::is_transient`]:
//!    - transient (Redis down or slow, no pooled connection, a lock held too long or without
//!      a ttl, a lock lost, too many concurrent changes): nothing was recorded, or the
//!      whole transaction was. Retry **the same request** later, with a backoff
//!      (`engine::backoff::Backoff` is the formula the worker uses); it cannot happen twice.
//!    - not transient ([`TransferError::IdempotencyConflict`], [`TransferError::Corrupt`]):
//!      retrying will not help; the first needs a fresh idempotency key, the second an
//!      operator.
//!
//! ```no_run
//! # use wallet_transfer::{Status, TransferRequest, WalletService};
//! # fn handle(service: &WalletService, request: &TransferRequest) -> Result<(), Box<dyn std::error::Error>> {
//! match service.transfer(request) {
//!     Ok(outcome) if outcome.status == Status::Completed => println!("moved"),
//!     Ok(outcome) => println!("refused: {:?}", outcome.reason),
//!     Err(e) if e.is_transient() => println!("try the same request again later: {e}"),
//!     Err(e) => return Err(e.into()),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! The error and reason enums are `#[non_exhaustive]`: a `match` on [`FailureReason`] or
//! [`TransferError`] needs a wildcard arm, and a new variant in a minor release does not break
//! it (see [`FailureReason`] for the compile-time check). Deciding retries by
//! `is_transient`, never by listing variants, keeps a caller right when variants are added.
//!
//! Building the service fails with [`ServiceError`] (a bad setting, a bad URL, Redis
//! unreachable); wallet operations with [`WalletError`].
//!
//! # Features
//!
//! | feature | default | what it adds |
//! | --- | --- | --- |
//! | `worker` | yes | `worker`: the Kafka worker, its metrics and health endpoint (rdkafka, OpenSSL, tiny_http) |
//! | `tools` | yes | `tools` and the `wallet` binary (clap, ratatui, ...); implies `worker` |
//! | `test-hooks` | no | test-only engine hooks (a pause point inside a transfer); not for production |
//!
//! # Compatibility
//!
//! Stable across 0.1.x: the wire format (request and result JSON, dead-letter headers), the
//! Redis keys and hashes, and the library API. A 0.x minor release (0.2) may break the
//! library API, and says how in `CHANGELOG.md`. The Rust version tested is the
//! `rust-version` of `Cargo.toml` (1.95). See `docs/library.md`, "Compatibility".
//!
//! The wire format is written down for teams that do not read Rust as an AsyncAPI 3.0
//! document, [`ASYNCAPI_YAML`] (`asyncapi.yaml` in the repository): every topic the worker
//! reads or writes, its message key and headers, and a JSON Schema of every payload. The
//! crate's own types are that contract in Rust: [`TransferRequest::to_json`] writes
//! `TransferRequested`, [`TransferCompleted`] (serde) is `TransferCompleted`, the worker's
//! `worker::ledger::LedgerEntry` is `LedgerEntry`, and `worker::config` names the
//! dead-letter headers. The repository's tests check every message of a real run, and these
//! types, against the document.
//!
//! # Modules
//!
//! - [`engine`]: money ([`engine::money`]), the wire format ([`engine::message`]), wallets
//!   ([`engine::wallet`]), the transfer ([`engine::transfer`]), the service
//!   ([`engine::service`]), and what connecting and configuring name ([`engine::Topology`],
//!   [`engine::ClusterPools`], [`engine::RedisTls`], [`LockConfig`] and the errors).
//! - `worker`: the Kafka pipeline (feature `worker`).
//! - `tools`: operator tooling (feature `tools`).
//!
//! That is the public API, listed in the repository's `api/public-api.txt` (CI fails on a
//! change to it that the listing does not show). Items hidden from these docs
//! (`#[doc(hidden)]`: the engine's internal modules such as the lock, the key names and the
//! cluster's slot map, the worker's metrics and Kafka plumbing, the audit's machinery) exist
//! for the `wallet` binary and the repository's tests: they carry no stability promise and
//! may change in any release.
//!
//! `ARCHITECTURE.md` in the repository explains how the pieces fit and which invariants each
//! keeps.

#![warn(missing_docs)]

/// The README's examples compile and run as doc tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

pub mod engine;
#[cfg(feature = "tools")]
pub mod tools;
#[cfg(feature = "worker")]
pub mod worker;

/// The wire contract, `asyncapi.yaml` (AsyncAPI 3.0): the topics, keys, headers and payload
/// schemas of the worker's messages, for a caller that serves it, renders it or validates
/// messages against it. The same document as the repository's; see the crate docs,
/// "Compatibility".
pub const ASYNCAPI_YAML: &str = include_str!("../asyncapi.yaml");

pub use engine::lock::LockConfig;
pub use engine::message::{FailureReason, Status, TransferCompleted, TransferRequest};
pub use engine::money::{Amount, Currency};
pub use engine::service::{EngineConfig, ServiceError, WalletService};
pub use engine::setting::SettingError;
pub use engine::transfer::{Origin, TransferError, TransferOutcome};
pub use engine::wallet::{HistoryEntry, NewWallet, Wallet, WalletError, WalletStatus};
