//! [`SettingError`]: a configuration value that breaks its rule, as every config type's
//! `validate` reports it.
//!
//! Owns the shape of setting errors: which setting (its path in the config types, such as
//! `lock.ttl_ms`) and the rule it broke, with the value. Does not know flag or environment
//! names; the CLI maps each setting to its flag (so a user reads `--lock-ttl-ms`, an embedder
//! reads `lock.ttl_ms`).

use std::fmt;

/// A setting outside its rule. `setting` is the field's path in the config types
/// (`lock.ttl_ms`, `threads`); `rule` says what is allowed and what was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingError {
    /// The setting's path in the config types, such as `lock.ttl_ms`.
    pub setting: &'static str,
    /// What is allowed and what was given.
    pub rule: String,
}

impl SettingError {
    /// An error for `setting` with the `rule` it broke.
    pub fn new(setting: &'static str, rule: impl Into<String>) -> SettingError {
        SettingError {
            setting,
            rule: rule.into(),
        }
    }

    /// Checks `min <= value <= max`; the error states the range and the value.
    pub fn check_range<T: PartialOrd + fmt::Display>(
        setting: &'static str,
        value: T,
        min: T,
        max: T,
    ) -> Result<(), SettingError> {
        if value < min || value > max {
            return Err(SettingError::new(
                setting,
                format!("must be between {min} and {max}, got {value}"),
            ));
        }
        Ok(())
    }
}

/// Builder-style setters for a config struct: `with_<field>(value) -> Self` for each field
/// named, so that embedders write `EngineConfig::default().with_watch_retries_max(4)` and keep
/// compiling when fields are added (the config structs are `#[non_exhaustive]`, so they cannot
/// be built with a struct literal outside this crate). Each setter's doc points at its field.
///
/// `setters!(Type { with_a => a: A, with_b => b: B })`.
macro_rules! setters {
    ($ty:ident { $($setter:ident => $field:ident: $value:ty),* $(,)? }) => {
        impl $ty {
            $(
                #[doc = concat!("Sets [`", stringify!($ty), "::", stringify!($field), "`].")]
                #[must_use]
                pub fn $setter(mut self, value: $value) -> Self {
                    self.$field = value;
                    self
                }
            )*
        }
    };
}
pub(crate) use setters;

impl fmt::Display for SettingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.setting, self.rule)
    }
}

impl std::error::Error for SettingError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_error_names_the_setting_the_range_and_the_value() {
        let e = SettingError::check_range("threads", 0usize, 1, 256).unwrap_err();
        assert_eq!(e.setting, "threads");
        assert_eq!(e.to_string(), "threads must be between 1 and 256, got 0");
        assert!(SettingError::check_range("threads", 1usize, 1, 256).is_ok());
        assert!(SettingError::check_range("threads", 256usize, 1, 256).is_ok());
        assert!(SettingError::check_range("threads", 257usize, 1, 256).is_err());
    }
}
