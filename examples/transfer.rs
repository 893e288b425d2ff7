//! The engine embedded in a blocking program: create two wallets, move money, ask again with
//! the same request (a replay: nothing moves twice), and meet a business failure.
//!
//! ```sh
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example transfer
//! ```
//!
//! Needs only the engine: it builds with `--no-default-features`. Every run uses wallets of
//! its own (`alice_<run>`, `bob_<run>`), so it can run again against the same Redis.

use std::process::ExitCode;
use std::time::Duration;

use wallet_transfer::{
    Amount, Currency, EngineConfig, NewWallet, Status, TransferError, TransferOutcome,
    TransferRequest, WalletService,
};

fn main() -> ExitCode {
    // Errors print with Display: they say what happened and what to do.
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("transfer example: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let redis_url =
        std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string());
    // One service per process: it owns the Redis pool (size it to the threads that call it)
    // and is cheap to clone into them. `connect` checks the settings and that Redis answers.
    let service = WalletService::connect(&redis_url, 2, EngineConfig::default())?;

    let run = run_id();
    let (alice, bob) = (format!("alice_{run}"), format!("bob_{run}"));
    service.create_wallet(
        &NewWallet::new(&alice, Amount::parse("100.00")?, Currency::USD)
            .with_full_name("Alice")
            .with_email("alice@example.com"),
    )?;
    service.create_wallet(&NewWallet::new(&bob, Amount::ZERO, Currency::USD))?;
    println!("wallets: {alice} 100.00, {bob} 0.00");

    // A transfer. The idempotency key defaults to the transfer id.
    let request =
        TransferRequest::new(&format!("tx_{run}_1"), &alice, &bob, "40.50", Currency::USD)?;
    let outcome = transfer(&service, &request)?;
    println!(
        "transfer {}: {} ({} -> {} {}), balances {alice} {}, {bob} {}",
        outcome.transfer_id,
        outcome.status.as_str(),
        outcome.from_user,
        outcome.to_user,
        outcome.amount,
        service.balance(&alice)?,
        service.balance(&bob)?,
    );

    // The same request again (a client that timed out and retried, a redelivery): it is
    // answered from the record, marked duplicate, and nothing moves.
    let replay = transfer(&service, &request)?;
    assert!(replay.duplicate);
    assert_eq!(replay.status, outcome.status);
    println!(
        "replay {}: {} duplicate={}, balances unchanged: {alice} {}, {bob} {}",
        replay.transfer_id,
        replay.status.as_str(),
        replay.duplicate,
        service.balance(&alice)?,
        service.balance(&bob)?,
    );

    // A business failure is an answer, not an error: it is recorded like a success, so asking
    // again gives the same answer. Do not retry it.
    let too_much = TransferRequest::new(
        &format!("tx_{run}_2"),
        &alice,
        &bob,
        "500.00",
        Currency::USD,
    )?;
    let refused = transfer(&service, &too_much)?;
    assert_eq!(refused.status, Status::Failed);
    match refused.reason {
        Some(reason) => println!("transfer {}: FAILED {reason}", refused.transfer_id),
        None => unreachable!("a FAILED outcome has a reason"),
    }
    Ok(())
}

/// Runs a transfer, retrying transient errors (Redis down, a lock held too long) with the same
/// request: the idempotency key makes a retry safe. Other errors need an operator.
fn transfer(
    service: &WalletService,
    request: &TransferRequest,
) -> Result<TransferOutcome, TransferError> {
    let mut attempt = 0;
    loop {
        match service.transfer(request) {
            Err(e) if e.is_transient() && attempt < 5 => {
                attempt += 1;
                eprintln!("transfer {}: {e}; retry {attempt}", request.transfer_id);
                std::thread::sleep(Duration::from_millis(100 << attempt));
            }
            other => return other,
        }
    }
}

/// A short id that differs from run to run.
fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{:x}{:x}", std::process::id(), nanos % 0x10000)
}
