//! Wallet transfers held in Redis, exactly once per request, safe under any concurrency.
//!
//! The engine is a blocking library: [`WalletService`] creates wallets, deposits and runs
//! transfers; the `wallet` binary wraps it in a Kafka worker and operator commands.
//!
//! ```no_run
//! use wallet_transfer::{Amount, Currency, EngineConfig, NewWallet, TransferRequest, WalletService};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let service = WalletService::connect("redis://127.0.0.1:6379", 4, EngineConfig::default())?;
//! for (id, balance) in [("alice", "100.00"), ("bob", "0")] {
//!     service.create_wallet(&NewWallet {
//!         user_id: id.into(),
//!         full_name: id.into(),
//!         email: format!("{id}@example.com"),
//!         opening_balance: Amount::parse(balance)?,
//!         currency: Currency::USD,
//!     })?;
//! }
//! let request = TransferRequest::new("tx_1", "alice", "bob", "40.50", Currency::USD)?;
//! let outcome = service.transfer(&request)?;
//! println!("{:?} {:?}", outcome.status, outcome.reason);
//! // The same request again has no further effect: it is answered from the record.
//! assert!(service.transfer(&request)?.duplicate);
//! # Ok(())
//! # }
//! ```

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

pub use engine::message::{FailureReason, Status, TransferCompleted, TransferRequest};
pub use engine::money::{Amount, Currency};
pub use engine::service::{EngineConfig, WalletService};
pub use engine::setting::SettingError;
pub use engine::transfer::{TransferError, TransferOutcome};
pub use engine::wallet::{NewWallet, Wallet, WalletStatus};
