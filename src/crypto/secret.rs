//! Zeroizing containers for secret bytes.

use core::fmt;

use rand_core::CryptoRng;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// `N` secret bytes on the heap, erased on drop.
///
/// Boxed so that moving the key moves a pointer and leaves no copy of the
/// bytes behind. Not `Copy`; `Clone` is deliberately not implemented (use
/// [`SecretKey::duplicate`] where a second copy is really needed). `Debug`
/// prints only the length. Equality is constant-time.
pub struct SecretKey<const N: usize>(Box<[u8; N]>);

impl<const N: usize> SecretKey<N> {
    /// Takes ownership of `b` (the caller's array is moved into the box; a
    /// caller holding a copy must erase it).
    #[must_use]
    pub fn from_bytes(mut b: [u8; N]) -> Self {
        let key = Self(Box::new(b));
        b.zeroize();
        key
    }

    /// Fills a fresh key from a cryptographically secure RNG.
    #[must_use]
    pub fn random(rng: &mut impl CryptoRng) -> Self {
        let mut boxed = Box::new([0u8; N]);
        rng.fill_bytes(boxed.as_mut_slice());
        Self(boxed)
    }

    /// Copies the key from a slice of exactly `N` bytes.
    ///
    /// # Errors
    /// [`crate::crypto::CryptoError::BadLength`] if `bytes.len() != N`.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, crate::crypto::CryptoError> {
        if bytes.len() != N {
            return Err(crate::crypto::CryptoError::BadLength {
                what: "secret key",
                expected: N,
                got: bytes.len(),
            });
        }
        let mut boxed = Box::new([0u8; N]);
        boxed.copy_from_slice(bytes);
        Ok(Self(boxed))
    }

    /// The secret bytes. Keep the borrow short; do not copy them out.
    #[must_use]
    pub fn expose(&self) -> &[u8; N] {
        &self.0
    }

    /// An explicit second copy (both copies zeroize on drop).
    #[must_use]
    pub fn duplicate(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<const N: usize> Drop for SecretKey<N> {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl<const N: usize> ZeroizeOnDrop for SecretKey<N> {}

impl<const N: usize> fmt::Debug for SecretKey<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey<{N}>(<redacted>)")
    }
}

impl<const N: usize> PartialEq for SecretKey<N> {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_slice().ct_eq(other.0.as_slice()).into()
    }
}

impl<const N: usize> Eq for SecretKey<N> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let k = SecretKey::from_bytes([0xabu8; 16]);
        let s = format!("{k:?}");
        assert!(!s.contains("ab") && !s.contains("171"), "{s}");
        assert!(s.contains("redacted"));
    }

    #[test]
    fn from_slice_checks_length_and_equality_is_by_value() {
        assert!(SecretKey::<4>::from_slice(&[1, 2, 3]).is_err());
        let a = SecretKey::<4>::from_slice(&[1, 2, 3, 4]).unwrap();
        let b = SecretKey::from_bytes([1, 2, 3, 4]);
        assert_eq!(a, b);
        assert_ne!(a, SecretKey::from_bytes([1, 2, 3, 5]));
        assert_eq!(a.duplicate().expose(), &[1, 2, 3, 4]);
    }

    #[test]
    fn random_keys_differ() {
        let mut rng = rand::rng();
        let a = SecretKey::<32>::random(&mut rng);
        let b = SecretKey::<32>::random(&mut rng);
        assert_ne!(a, b);
    }
}
