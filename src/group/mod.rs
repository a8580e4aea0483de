//! Pure group cryptography: sender-key chains, signed membership commits and
//! the parallel pairwise setup. No sockets, no files.
