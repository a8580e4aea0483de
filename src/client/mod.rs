//! The client: a pure session, encrypted local state, the socket driver and
//! the terminal chat.
//!
//! ```text
//!  cli ──► net::Client (blocking socket, reconnect) ──► session::Session (pure)
//!                │                                          │
//!                └── state::Unlocked::transact ◄────────────┘ ClientState
//! ```

pub mod chat;
pub mod commands;
pub mod net;
pub mod session;
pub mod state;
