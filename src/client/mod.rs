//! The client: a pure session, encrypted local state, the socket driver and
//! the terminal chat.

pub mod state;
