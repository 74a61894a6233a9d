//! Auth tokens: `i` + 16 random body characters + 1 Luhn-mod-65 check character.
//!
//! The format is the one tunnel-rs used, so users keep their tokens. The check
//! character catches typos before a token ever reaches the network: every
//! single-character change in half the positions, and 63 of 64 changes in the other
//! half (with an odd alphabet size, doubling maps `d` and `d + 32` to the same value).

use std::fmt;

use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// The 65 characters a token body may use, in checksum order.
pub const ALPHABET: &[u8; 65] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.";
/// Total token length in characters.
pub const TOKEN_LEN: usize = 18;
/// Number of random body characters.
pub const BODY_LEN: usize = 16;
const N: u32 = ALPHABET.len() as u32;

/// A syntactically valid token whose checksum matches.
///
/// Debug output is masked; use [`AuthToken::expose`] where the secret must be shown
/// (printing a freshly generated token, sending it to the server).
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct AuthToken([u8; TOKEN_LEN]);

/// Why a string is not a valid token. Each variant says exactly what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token must be exactly {TOKEN_LEN} characters, got {0}")]
    Length(usize),
    #[error("token must start with 'i', got {0:?}")]
    MissingPrefix(char),
    #[error("invalid character {ch:?} at position {position} (allowed: A-Z a-z 0-9 - _ .)")]
    InvalidChar { ch: char, position: usize },
    #[error("checksum mismatch (likely a typo)")]
    Checksum,
}

/// The token could not be generated because the OS random source failed.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random number generator failed: {0}")]
pub struct RandomError(pub getrandom::Error);

impl AuthToken {
    /// Generates a new token with a body drawn uniformly from the OS CSPRNG.
    pub fn generate() -> Result<Self, RandomError> {
        let mut body = [0u8; BODY_LEN];
        let mut filled = 0;
        // Rejection sampling keeps the distribution uniform: 195 = 3 * 65 is the
        // largest multiple of 65 that fits in a byte.
        let mut pool = [0u8; 32];
        while filled < BODY_LEN {
            getrandom::fill(&mut pool).map_err(RandomError)?;
            for &b in pool.iter() {
                if filled == BODY_LEN {
                    break;
                }
                if b < 195 {
                    body[filled] = ALPHABET[(b % 65) as usize];
                    filled += 1;
                }
            }
        }
        pool.zeroize();
        let token = Self::from_body(&body);
        body.zeroize();
        Ok(token)
    }

    /// Builds the token for a body of 16 alphabet characters (the check character is computed).
    ///
    /// # Panics
    /// If a body byte is not in [`ALPHABET`]; callers pass alphabet characters only.
    fn from_body(body: &[u8; BODY_LEN]) -> Self {
        let digits: Vec<u32> = body.iter().map(|&c| index_of(c).unwrap_or(0)).collect();
        let check = check_index(&digits);
        let mut raw = [0u8; TOKEN_LEN];
        raw[0] = b'i';
        raw[1..=BODY_LEN].copy_from_slice(body);
        raw[TOKEN_LEN - 1] = ALPHABET[check as usize];
        Self(raw)
    }

    /// The token as text. Treat the result as a secret.
    pub fn expose(&self) -> &str {
        // Only ASCII alphabet characters are ever stored.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// Constant-time equality: the time taken does not depend on where tokens differ.
    pub fn ct_eq(&self, other: &AuthToken) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl std::str::FromStr for AuthToken {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let len = s.chars().count();
        if len != TOKEN_LEN {
            return Err(TokenError::Length(len));
        }
        let mut chars = s.chars();
        let first = chars.next().unwrap_or_default();
        if first != 'i' {
            return Err(TokenError::MissingPrefix(first));
        }
        let mut digits = Vec::with_capacity(BODY_LEN + 1);
        for (i, ch) in chars.enumerate() {
            let idx = u8::try_from(ch).ok().and_then(index_of);
            match idx {
                Some(d) => digits.push(d),
                None => {
                    return Err(TokenError::InvalidChar {
                        ch,
                        position: i + 2,
                    });
                }
            }
        }
        if !luhn_sum(&digits, false).is_multiple_of(N) {
            return Err(TokenError::Checksum);
        }
        let mut raw = [0u8; TOKEN_LEN];
        raw.copy_from_slice(s.as_bytes());
        Ok(Self(raw))
    }
}

impl fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthToken(<redacted>)")
    }
}

fn index_of(c: u8) -> Option<u32> {
    ALPHABET.iter().position(|&a| a == c).map(|p| p as u32)
}

/// Luhn mod N: walking from the right, weights alternate starting with 2 when computing
/// a check character over the body, or with 1 when validating body + check.
fn luhn_sum(digits: &[u32], start_with_two: bool) -> u32 {
    let mut weight_two = start_with_two;
    let mut sum = 0;
    for &d in digits.iter().rev() {
        let v = if weight_two { d * 2 } else { d };
        sum += v / N + v % N;
        weight_two = !weight_two;
    }
    sum
}

fn check_index(body: &[u32]) -> u32 {
    (N - luhn_sum(body, true) % N) % N
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const VALID: [&str; 5] = [
        "iABCDEFGHIJKLMNOPL",
        "i0123456789abcdef5",
        "izzzzzzzzzzzzzzzzD",
        "i----____....AAAAe",
        "iKq3_x-9.ZpLm0WvTW",
    ];

    #[test]
    fn vectors_validate() {
        for v in VALID {
            let t: AuthToken = v.parse().unwrap_or_else(|e| panic!("{v}: {e}"));
            assert_eq!(t.expose(), v);
        }
    }

    #[test]
    fn vectors_checksums_are_recomputed_from_body() {
        for v in VALID {
            let body: [u8; BODY_LEN] = v.as_bytes()[1..=BODY_LEN].try_into().unwrap();
            assert_eq!(AuthToken::from_body(&body).expose(), v);
        }
    }

    #[test]
    fn invalid_vector_is_a_checksum_mismatch() {
        assert_eq!(
            "iABCDEF1234567890X".parse::<AuthToken>().unwrap_err(),
            TokenError::Checksum
        );
        assert_eq!(
            TokenError::Checksum.to_string(),
            "checksum mismatch (likely a typo)"
        );
    }

    #[test]
    fn each_error_is_specific() {
        assert_eq!(
            "iABC".parse::<AuthToken>().unwrap_err(),
            TokenError::Length(4)
        );
        assert_eq!(
            "xABCDEFGHIJKLMNOPL".parse::<AuthToken>().unwrap_err(),
            TokenError::MissingPrefix('x')
        );
        assert_eq!(
            "iABCDEFGH!JKLMNOPL".parse::<AuthToken>().unwrap_err(),
            TokenError::InvalidChar {
                ch: '!',
                position: 10
            }
        );
        assert_eq!(
            "iABCDEFGHéJKLMNOPL".parse::<AuthToken>().unwrap_err(),
            TokenError::InvalidChar {
                ch: 'é',
                position: 10
            }
        );
        let msg = TokenError::InvalidChar {
            ch: '!',
            position: 10,
        }
        .to_string();
        assert!(msg.contains("'!'") && msg.contains("position 10"), "{msg}");
        assert!(TokenError::Length(4).to_string().contains("exactly 18"));
    }

    #[test]
    fn surrounding_whitespace_is_ignored() {
        assert!(" iABCDEFGHIJKLMNOPL\n".parse::<AuthToken>().is_ok());
    }

    #[test]
    fn fifty_generated_tokens_are_valid_and_distinct() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            let t = AuthToken::generate().unwrap();
            let s = t.expose().to_string();
            assert!(s.parse::<AuthToken>().is_ok(), "{s}");
            assert!(seen.insert(s));
        }
    }

    #[test]
    fn debug_is_masked() {
        let t: AuthToken = VALID[0].parse().unwrap();
        assert!(!format!("{t:?}").contains("ABCDEF"));
    }

    #[test]
    fn ct_eq_compares() {
        let a: AuthToken = VALID[0].parse().unwrap();
        let b: AuthToken = VALID[1].parse().unwrap();
        assert!(a.ct_eq(&a.clone()));
        assert!(!a.ct_eq(&b));
    }

    proptest! {
        #[test]
        fn any_body_round_trips(body in proptest::array::uniform16(0usize..65)) {
            let body: [u8; BODY_LEN] = body.map(|i| ALPHABET[i]);
            let t = AuthToken::from_body(&body);
            prop_assert!(t.expose().parse::<AuthToken>().is_ok());
        }

        #[test]
        fn single_character_typos_are_caught(
            body in proptest::array::uniform16(0usize..65),
            pos in 1usize..18,
            replacement in 0usize..65,
        ) {
            let body: [u8; BODY_LEN] = body.map(|i| ALPHABET[i]);
            let t = AuthToken::from_body(&body);
            let mut typo = t.expose().as_bytes().to_vec();
            prop_assume!(typo[pos] != ALPHABET[replacement]);
            typo[pos] = ALPHABET[replacement];
            let typo = String::from_utf8(typo).unwrap();
            // Positions at an even distance from the right carry weight 1 and catch every
            // change; weight-2 positions miss only the `d <-> d + 32` pairs with d >= 1
            // (doubled, both reduce to 2d; 0 and 32 reduce to 0 and 64).
            let weight_two = (TOKEN_LEN - 1 - pos) % 2 == 1;
            let old = index_of(t.expose().as_bytes()[pos]).unwrap();
            let new = replacement as u32;
            let collides = weight_two && old.min(new) >= 1 && old.abs_diff(new) == 32;
            let result = typo.parse::<AuthToken>();
            if collides {
                prop_assert!(result.is_ok());
            } else {
                prop_assert_eq!(result.unwrap_err(), TokenError::Checksum);
            }
        }

        #[test]
        fn arbitrary_strings_never_panic(s in ".{0,40}") {
            let _ = s.parse::<AuthToken>();
        }
    }
}
