//! Pairwise setup: from my identity and n peers' certified identities, the
//! n pairwise channels (one DH agreement each, both directions' keys), in
//! parallel with rayon, and my distribution sealed to each.
//!
//! This is the O(n) per-client share of the group's O(n²) setup. The DH
//! agreements (constant-time 256-bit-exponent modexps) dominate; sealing is
//! microseconds and stays serial because the RNG is one injected `&mut`.

use rayon::prelude::*;

use super::GroupError;
use crate::crypto::identity::{IdentityKeyPair, PublicIdentity};
use crate::crypto::kdf::{EnvelopeKeys, channel_keys};
use crate::limits::PARALLEL_SETUP_THRESHOLD;
use crate::membership::GroupState;

/// How [`pairwise_channels`] spreads the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parallelism {
    /// Serial below [`PARALLEL_SETUP_THRESHOLD`] peers, rayon above.
    Auto,
    /// Always one thread (benchmarks, tests).
    Serial,
    /// Always rayon's `par_iter`.
    Parallel,
}

/// A pairwise channel with one peer: the keys for each direction.
pub struct PeerChannel {
    /// The peer's name.
    pub peer: String,
    /// Keys for envelopes from me to the peer: `channel_keys(Z, me, peer)`.
    pub send: EnvelopeKeys,
    /// Keys for envelopes from the peer to me: `channel_keys(Z, peer, me)`.
    pub recv: EnvelopeKeys,
}

impl std::fmt::Debug for PeerChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerChannel")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

/// One peer's channel, checked against the roster if one is given.
fn channel(
    me: &str,
    identity: &IdentityKeyPair,
    peer: &str,
    public: &PublicIdentity,
    roster: Option<&GroupState>,
) -> Result<PeerChannel, GroupError> {
    if let Some(roster) = roster {
        match roster.identity_key(peer) {
            None => return Err(GroupError::NotMember(peer.to_owned())),
            Some(k) if k != &public.signing_key => {
                return Err(GroupError::BadIdentity(peer.to_owned()));
            }
            Some(_) => {}
        }
    }
    // 1. The Ed25519 identity certifies the DH key.
    public
        .verify()
        .map_err(|_| GroupError::BadIdentity(peer.to_owned()))?;
    // 2. Z = peer^a mod p, range-checked, Z != 1 (crypto::dh).
    let z = identity.dh().agree(&public.dh_public)?;
    // 3. One key pair per direction (sender name first in the info).
    Ok(PeerChannel {
        peer: peer.to_owned(),
        send: channel_keys(&z, me, peer),
        recv: channel_keys(&z, peer, me),
    })
}

/// Whether `mode` runs `peers` peers on rayon.
fn uses_rayon(mode: Parallelism, peers: usize) -> bool {
    match mode {
        Parallelism::Auto => peers >= PARALLEL_SETUP_THRESHOLD,
        Parallelism::Serial => false,
        Parallelism::Parallel => true,
    }
}

/// The pairwise channels between `me` and each peer, in input order.
///
/// Each peer's certificate is verified; with `roster`, each peer must be a
/// member whose roster key is its identity's signing key. A peer that fails
/// gets its own `Err` and does not stop the others.
pub fn pairwise_channels(
    me: &str,
    identity: &IdentityKeyPair,
    peers: &[(String, PublicIdentity)],
    roster: Option<&GroupState>,
    mode: Parallelism,
) -> Vec<Result<PeerChannel, GroupError>> {
    let parallel = uses_rayon(mode, peers.len());
    let one =
        |(name, public): &(String, PublicIdentity)| channel(me, identity, name, public, roster);
    if parallel {
        // `collect` on an indexed parallel iterator keeps input order.
        peers.par_iter().map(one).collect()
    } else {
        peers.iter().map(one).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_serial_below_the_threshold() {
        assert!(!uses_rayon(Parallelism::Auto, PARALLEL_SETUP_THRESHOLD - 1));
        assert!(uses_rayon(Parallelism::Auto, PARALLEL_SETUP_THRESHOLD));
        assert!(!uses_rayon(Parallelism::Serial, 1_000));
        assert!(uses_rayon(Parallelism::Parallel, 1));
    }
}
