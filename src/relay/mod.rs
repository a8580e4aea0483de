//! The relay: a pure protocol core and the mio event loop that feeds it.
