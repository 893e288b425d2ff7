//! Money: amounts as checked `i64` counts of minor units (cents), and currencies.
//!
//! Owns the one text form of an amount used on the wire and in Redis (`"5234.50"`) and the
//! strict parser that accepts it. Does not know about wallets, transfers or JSON shapes; the
//! message module decides which JSON values reach [`Amount::parse`].

use std::fmt;
use std::str::FromStr;

/// Minor units per major unit (cents per dollar).
pub const MINOR_PER_MAJOR: i64 = 100;

/// The largest amount one request may move: 1_000_000_000_000.00.
pub const AMOUNT_LIMIT: Amount = Amount(1_000_000_000_000 * MINOR_PER_MAJOR);

/// Largest balance a wallet may hold: a credit or deposit past it is refused
/// (`balance_limit`). Far below `i64::MAX`, so no balance arithmetic can overflow.
pub const BALANCE_LIMIT: Amount = Amount(1_000_000_000_000_000 * MINOR_PER_MAJOR);

const _: () = assert!(AMOUNT_LIMIT.0 <= BALANCE_LIMIT.0);
const _: () = assert!(
    BALANCE_LIMIT.0 <= i64::MAX / 2,
    "two balances add without overflow"
);

/// Longest amount text accepted, in bytes. Bounds the parser's work on hostile input.
const AMOUNT_TEXT_LEN_LIMIT: usize = 32;

/// A signed count of minor units. Balances use the full range; request amounts are further
/// restricted to `0 < amount <= AMOUNT_LIMIT` by [`Amount::parse_transfer_amount`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Amount(i64);

/// Why a text is not an amount. The message names the rule that was broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AmountError {
    /// The text is empty.
    #[error("must not be empty")]
    Empty,
    /// The text is longer than any amount; its length in bytes.
    #[error("too long ({0} bytes, at most {AMOUNT_TEXT_LEN_LIMIT})")]
    TooLong(usize),
    /// Not the strict form (a sign `+`, an exponent, spaces, a leading `.`, ...).
    #[error("must be digits with an optional '.' and one or two decimals, got {0:?}")]
    Malformed(String),
    /// Three or more decimals: amounts are whole cents.
    #[error("at most 2 decimals, got {0}")]
    TooManyDecimals(String),
    /// A transfer amount of zero or less.
    #[error("must be greater than 0, got {0}")]
    NotPositive(String),
    /// A transfer amount over [`AMOUNT_LIMIT`], or digits beyond the `i64` range.
    #[error("must be at most {AMOUNT_LIMIT}, got {0}")]
    TooLarge(String),
    /// [`Amount::checked_add`] or [`Amount::checked_sub`] left the `i64` range.
    #[error("arithmetic overflow")]
    Overflow,
}

impl Amount {
    /// Zero.
    pub const ZERO: Amount = Amount(0);

    /// An amount of `minor` minor units (cents).
    pub const fn from_minor(minor: i64) -> Amount {
        Amount(minor)
    }

    /// The count of minor units.
    pub const fn minor(self) -> i64 {
        self.0
    }

    /// True below zero (a balance never is, unless the ledger is corrupt).
    pub fn is_negative(self) -> bool {
        self.0 < 0
    }

    /// The sum, or [`AmountError::Overflow`]; never wraps.
    pub fn checked_add(self, other: Amount) -> Result<Amount, AmountError> {
        self.0
            .checked_add(other.0)
            .map(Amount)
            .ok_or(AmountError::Overflow)
    }

    /// The difference, or [`AmountError::Overflow`]; never wraps.
    pub fn checked_sub(self, other: Amount) -> Result<Amount, AmountError> {
        self.0
            .checked_sub(other.0)
            .map(Amount)
            .ok_or(AmountError::Overflow)
    }

    /// Parses the strict text form: optional leading `-`, digits, optionally `.` and one or two
    /// digits. No sign `+`, no exponent, no spaces, no leading `.`. Used for balances read from
    /// Redis, which may be negative only if the ledger is already corrupt (the audit finds it).
    pub fn parse(text: &str) -> Result<Amount, AmountError> {
        if text.is_empty() {
            return Err(AmountError::Empty);
        }
        if text.len() > AMOUNT_TEXT_LEN_LIMIT {
            return Err(AmountError::TooLong(text.len()));
        }
        let (negative, body) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (whole, fraction) = match body.split_once('.') {
            Some((w, f)) => (w, Some(f)),
            None => (body, None),
        };
        let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !all_digits(whole) {
            return Err(AmountError::Malformed(text.to_string()));
        }
        let cents: i64 = match fraction {
            None => 0,
            Some(f) if !all_digits(f) => return Err(AmountError::Malformed(text.to_string())),
            Some(f) if f.len() > 2 => return Err(AmountError::TooManyDecimals(text.to_string())),
            Some(f) if f.len() == 1 => i64::from(f.as_bytes()[0] - b'0') * 10,
            Some(f) => f.parse().expect("two ascii digits"),
        };
        // The magnitude in i128, so that i64::MIN (whose magnitude is not an i64) parses too.
        let too_large = || AmountError::TooLarge(text.to_string());
        let whole: i128 = whole.parse().map_err(|_| too_large())?;
        let magnitude = whole
            .checked_mul(i128::from(MINOR_PER_MAJOR))
            .and_then(|m| m.checked_add(i128::from(cents)))
            .ok_or_else(too_large)?;
        let signed = if negative { -magnitude } else { magnitude };
        i64::try_from(signed).map(Amount).map_err(|_| too_large())
    }

    /// Parses an amount that a request may move: the strict form, no sign, `0 < a <= AMOUNT_LIMIT`.
    pub fn parse_transfer_amount(text: &str) -> Result<Amount, AmountError> {
        if text.starts_with('-') {
            return Err(AmountError::NotPositive(text.to_string()));
        }
        let amount = Amount::parse(text).map_err(|e| match e {
            // Digits beyond i64 are still "too large" for a request, say so plainly.
            AmountError::TooLarge(t) => AmountError::TooLarge(t),
            other => other,
        })?;
        if amount.0 <= 0 {
            return Err(AmountError::NotPositive(text.to_string()));
        }
        if amount > AMOUNT_LIMIT {
            return Err(AmountError::TooLarge(text.to_string()));
        }
        Ok(amount)
    }
}

impl fmt::Display for Amount {
    /// The canonical text form: exactly two decimals, `-` for negatives, `"5234.50"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let magnitude = self.0.unsigned_abs();
        let per = MINOR_PER_MAJOR as u64;
        write!(f, "{sign}{}.{:02}", magnitude / per, magnitude % per)
    }
}

impl FromStr for Amount {
    type Err = AmountError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Amount::parse(s)
    }
}

/// The currencies a wallet may hold, by their ISO 4217 codes. `#[non_exhaustive]`: more may
/// come in a minor release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum Currency {
    /// US dollar, the default of a request that names none.
    USD,
    /// Euro.
    EUR,
    /// Pound sterling.
    GBP,
}

impl Currency {
    /// Every currency, in declaration order.
    pub const ALL: [Currency; 3] = [Currency::USD, Currency::EUR, Currency::GBP];

    /// The ISO 4217 code, as on the wire and in Redis (`"USD"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Currency::USD => "USD",
            Currency::EUR => "EUR",
            Currency::GBP => "GBP",
        }
    }
}

/// A text that names no [`Currency`]; holds the text (cut to 16 characters).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be one of USD, EUR, GBP, got {0:?}")]
pub struct CurrencyError(pub String);

impl FromStr for Currency {
    type Err = CurrencyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Currency::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| CurrencyError(s.chars().take(16).collect()))
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_accepted_forms() {
        assert_eq!(Amount::parse("0").unwrap().minor(), 0);
        assert_eq!(Amount::parse("100").unwrap().minor(), 10_000);
        assert_eq!(Amount::parse("100.5").unwrap().minor(), 10_050);
        assert_eq!(Amount::parse("100.05").unwrap().minor(), 10_005);
        assert_eq!(Amount::parse("5234.50").unwrap().minor(), 523_450);
        assert_eq!(Amount::parse("-1.25").unwrap().minor(), -125);
    }

    #[test]
    fn rejects_each_broken_rule_by_name() {
        assert_eq!(Amount::parse(""), Err(AmountError::Empty));
        assert!(matches!(
            Amount::parse("100.505"),
            Err(AmountError::TooManyDecimals(_))
        ));
        for bad in [
            "1e3", ".5", "5.", "+5", " 5", "5 ", "1,00", "abc", "-", "--1", "0x10",
        ] {
            assert!(
                matches!(Amount::parse(bad), Err(AmountError::Malformed(_))),
                "{bad:?} should be malformed, got {:?}",
                Amount::parse(bad)
            );
        }
        assert!(matches!(
            Amount::parse("99999999999999999999"),
            Err(AmountError::TooLarge(_))
        ));
        assert!(matches!(
            Amount::parse(&"1".repeat(40)),
            Err(AmountError::TooLong(40))
        ));
    }

    #[test]
    fn transfer_amounts_are_positive_and_bounded() {
        assert_eq!(Amount::parse_transfer_amount("0.01").unwrap().minor(), 1);
        assert_eq!(
            Amount::parse_transfer_amount("1000000000000.00").unwrap(),
            AMOUNT_LIMIT
        );
        assert!(matches!(
            Amount::parse_transfer_amount("0"),
            Err(AmountError::NotPositive(_))
        ));
        assert!(matches!(
            Amount::parse_transfer_amount("-5"),
            Err(AmountError::NotPositive(_))
        ));
        assert!(matches!(
            Amount::parse_transfer_amount("1000000000000.01"),
            Err(AmountError::TooLarge(_))
        ));
    }

    #[test]
    fn error_messages_name_the_rule() {
        let e = Amount::parse("100.505").unwrap_err().to_string();
        assert_eq!(e, "at most 2 decimals, got 100.505");
    }

    #[test]
    fn formats_with_two_decimals() {
        assert_eq!(Amount::from_minor(523_450).to_string(), "5234.50");
        assert_eq!(Amount::from_minor(5).to_string(), "0.05");
        assert_eq!(Amount::from_minor(-5).to_string(), "-0.05");
        assert_eq!(
            Amount::from_minor(i64::MIN).to_string(),
            "-92233720368547758.08"
        );
    }

    #[test]
    fn arithmetic_is_checked() {
        let max = Amount::from_minor(i64::MAX);
        assert_eq!(
            max.checked_add(Amount::from_minor(1)),
            Err(AmountError::Overflow)
        );
        let min = Amount::from_minor(i64::MIN);
        assert_eq!(
            min.checked_sub(Amount::from_minor(1)),
            Err(AmountError::Overflow)
        );
    }

    #[test]
    fn currency_is_one_of_three() {
        assert_eq!("EUR".parse::<Currency>().unwrap(), Currency::EUR);
        assert!("usd".parse::<Currency>().is_err());
        assert!("JPY".parse::<Currency>().is_err());
    }

    proptest! {
        #[test]
        fn every_amount_round_trips_through_text(minor in prop_oneof![
            Just(i64::MIN), Just(i64::MIN + 1), Just(-1i64), Just(0i64), Just(i64::MAX - 1),
            Just(i64::MAX), any::<i64>()
        ]) {
            let a = Amount::from_minor(minor);
            prop_assert_eq!(Amount::parse(&a.to_string()), Ok(a));
        }

        #[test]
        fn every_accepted_string_formats_back_canonically(
            whole in "[0-9]{1,12}", frac in proptest::option::of("[0-9]{1,2}")
        ) {
            let text = match &frac { Some(f) => format!("{whole}.{f}"), None => whole.clone() };
            let parsed = Amount::parse(&text).unwrap();
            let w: i64 = whole.parse().unwrap();
            let cents: i64 = match &frac {
                None => 0,
                Some(f) if f.len() == 1 => f.parse::<i64>().unwrap() * 10,
                Some(f) => f.parse().unwrap(),
            };
            prop_assert_eq!(parsed.minor(), w * 100 + cents);
            let canonical = parsed.to_string();
            prop_assert_eq!(Amount::parse(&canonical), Ok(parsed));
            let (_, decimals) = canonical.split_once('.').unwrap();
            prop_assert_eq!(decimals.len(), 2);
        }

        #[test]
        fn any_text_outside_the_grammar_is_rejected(text in "[-0-9.e+ a]{0,24}") {
            let grammar = regex_lite_match(&text);
            prop_assert_eq!(Amount::parse(&text).is_ok(), grammar);
        }

        #[test]
        fn three_or_more_decimals_stay_rejected(whole in "[0-9]{1,6}", frac in "[0-9]{3,6}") {
            let text = format!("{whole}.{frac}");
            prop_assert!(
                matches!(Amount::parse(&text), Err(AmountError::TooManyDecimals(_))),
                "expected TooManyDecimals",
            );
        }
    }

    /// The grammar, written independently of the parser: `-?[0-9]+(\.[0-9]{1,2})?`, within
    /// the length bound and the i64 range.
    fn regex_lite_match(text: &str) -> bool {
        let body = text.strip_prefix('-').unwrap_or(text);
        let (w, f) = match body.find('.') {
            Some(i) => (&body[..i], Some(&body[i + 1..])),
            None => (body, None),
        };
        let digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
        let shape = digits(w) && f.is_none_or(|f| digits(f) && f.len() <= 2);
        if !shape || text.len() > 32 {
            return false;
        }
        let cents = match f {
            None => 0,
            Some(f) if f.len() == 1 => f.parse::<i128>().unwrap() * 10,
            Some(f) => f.parse::<i128>().unwrap(),
        };
        w.parse::<i128>()
            .is_ok_and(|w| w * 100 + cents <= i64::MAX as i128)
    }
}
