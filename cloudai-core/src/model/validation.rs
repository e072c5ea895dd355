use std::fmt;

/// Why a value given by a user or a peer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValidationError {
    /// A number was NaN or infinite.
    #[error("{field} must be a finite number")]
    NotFinite {
        /// The offending field.
        field: &'static str,
    },
    /// A number was below zero.
    #[error("{field} must not be negative (got {value})")]
    Negative {
        /// The offending field.
        field: &'static str,
        /// The value given.
        value: String,
    },
    /// A number or text exceeded its limit.
    #[error("{field} is too large: {value} (limit {limit})")]
    TooLarge {
        /// The offending field.
        field: &'static str,
        /// The value given, as text.
        value: String,
        /// The limit, as text.
        limit: String,
    },
    /// A required text was empty.
    #[error("{field} must not be empty")]
    Empty {
        /// The offending field.
        field: &'static str,
    },
    /// A value is well-formed but not allowed here.
    #[error("{field}: {reason}")]
    Invalid {
        /// The offending field.
        field: &'static str,
        /// Why it is refused.
        reason: String,
    },
    /// A text contained a character that is not allowed there.
    #[error("{field} contains a character that is not allowed: {found:?}")]
    BadCharacter {
        /// The offending field.
        field: &'static str,
        /// The first offending character.
        found: char,
    },
}

impl ValidationError {
    pub(crate) fn too_large(
        field: &'static str,
        value: impl fmt::Display,
        limit: impl fmt::Display,
    ) -> Self {
        ValidationError::TooLarge {
            field,
            value: value.to_string(),
            limit: limit.to_string(),
        }
    }
}
