//! `wallet deposit USER AMOUNT`: adds money to an active wallet and prints the new balance.
//!
//! Owns the USER and AMOUNT checks (usage errors, exit 2, before any connection) and the
//! messages. Does not own the deposit itself or its history entry (`WalletService::deposit`).

use clap::Args;
use wallet_transfer::Amount;
use wallet_transfer::engine::message::check_user_id;
use wallet_transfer::engine::wallet::WalletError;

use crate::cli::{Failure, GlobalOpts, print_out};

#[derive(Debug, Args)]
#[command(
    after_help = "AMOUNT is in major units: digits with an optional '.' and one or two \
                  decimals, greater than 0 and at most 1000000000000.00. Prints the new \
                  balance.\n\
                  Example: wallet deposit user_1 250.00"
)]
pub struct DepositArgs {
    /// The user whose wallet receives the money
    #[arg(value_name = "USER")]
    pub user: String,

    /// Amount in major units, e.g. 250 or 250.50 (greater than 0, at most two decimals)
    #[arg(value_name = "AMOUNT", allow_hyphen_values = true)]
    pub amount: String,
}

/// Deposits the amount and prints the new balance.
pub fn run(global: &GlobalOpts, args: DepositArgs) -> Result<(), Failure> {
    let amount = checked_input(&args)?;
    let service = global.connect(1)?;
    match service.deposit(&args.user, amount) {
        Ok(balance) => print_out(&format!(
            "deposited {amount} to {}; balance now {balance}\n",
            args.user
        )),
        Err(WalletError::NotFound(id)) => Err(Failure::runtime(format!(
            "user {id:?} has no wallet (see wallet snapshot)"
        ))),
        Err(e) => Err(Failure::runtime(format!("deposit to {}: {e}", args.user))),
    }
}

/// The amount, once USER and AMOUNT are known to be well formed.
fn checked_input(args: &DepositArgs) -> Result<Amount, Failure> {
    check_user_id("USER", &args.user).map_err(|e| Failure::usage(e.to_string()))?;
    Amount::parse_transfer_amount(&args.amount).map_err(|e| Failure::usage(format!("AMOUNT: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::test_global;
    use wallet_transfer::engine::money::AMOUNT_LIMIT;

    fn args(user: &str, amount: &str) -> DepositArgs {
        DepositArgs {
            user: user.into(),
            amount: amount.into(),
        }
    }

    #[test]
    fn input_is_checked_before_any_connection() {
        assert_eq!(
            checked_input(&args("user_1", "250.50")).unwrap(),
            Amount::from_minor(25_050)
        );
        for (bad, named) in [
            (args("user 1", "5"), "USER"),
            (args("user_1", "-5"), "AMOUNT"),
            (args("user_1", "0"), "AMOUNT"),
            (args("user_1", "1.005"), "AMOUNT"),
        ] {
            let e = run(&test_global(), bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{e}");
            assert!(e.to_string().starts_with(named), "{e}");
        }
    }

    #[test]
    fn help_states_the_largest_amount() {
        let (_, help) = crate::cli::subcommand_help("deposit");
        assert!(help.contains(&format!("at most {AMOUNT_LIMIT}")), "{help}");
    }
}
