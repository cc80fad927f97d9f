//! Names people register on a server: short, lowercase, unambiguous in a terminal.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A registered name: 1 to [`Name::MAX_LEN`] characters of `a-z`, `0-9`, `-` and `_`,
/// starting with a letter. Names are case-folded to lowercase when parsed, so "Alice"
/// and "alice" are the same name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Name(String);

/// Why a string is not a valid [`Name`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    /// Empty or longer than [`Name::MAX_LEN`].
    #[error("a name has 1 to {} characters", Name::MAX_LEN)]
    Length,
    /// A character outside `a-z 0-9 - _`, or not starting with a letter.
    #[error("a name starts with a letter and uses only a-z, 0-9, '-' and '_'")]
    Characters,
}

impl Name {
    /// The longest name accepted.
    pub const MAX_LEN: usize = 32;

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Name {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        if s.is_empty() || s.len() > Self::MAX_LEN {
            return Err(NameError::Length);
        }
        let s = s.to_ascii_lowercase();
        let mut chars = s.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
        let rest_ok =
            chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !(first_ok && rest_ok) {
            return Err(NameError::Characters);
        }
        Ok(Name(s))
    }
}

// Decoding validates, so a peer can't smuggle an invalid name past the type.
impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Name({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated_and_folded() {
        assert_eq!("Alice".parse::<Name>().unwrap().as_str(), "alice");
        assert_eq!("bob-2_x".parse::<Name>().unwrap().as_str(), "bob-2_x");
        assert_eq!("".parse::<Name>(), Err(NameError::Length));
        assert_eq!("a".repeat(33).parse::<Name>(), Err(NameError::Length));
        for bad in ["2bob", "-x", "a b", "../etc", "é", "a/b", "a\u{0}"] {
            assert_eq!(bad.parse::<Name>(), Err(NameError::Characters), "{bad:?}");
        }
    }
}
