//! `--target hermes`: synthetic Hermes users over the relay's wire protocol.
//!
//! Not built yet: it needs the wire protocol (`src/wire`) and the relay
//! (`hermes relay`) on main. Until then the swarm refuses the target with a
//! clear message instead of measuring something else.

/// Explains why `--target hermes` cannot run yet.
///
/// # Errors
/// Always: the message says what is missing.
pub(crate) fn unsupported(real_crypto: bool) -> Result<bool, String> {
    let what = if real_crypto {
        "--crypto real needs the sender keys of src/group"
    } else {
        "it needs the wire protocol (src/wire) and `hermes relay`"
    };
    Err(format!(
        "--target hermes is not yet supported: {what}; use --target mqtt or --target redis"
    ))
}
