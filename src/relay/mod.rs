//! The relay: a pure protocol core and the mio event loop that feeds it.
//!
//! ```text
//!   event loop (mio) ──handle_*──► RelayCore ──append/get/release──► Store
//!        ▲                            │
//!        └────poll_transmit/close─────┘
//! ```
//!
//! [`core::RelayCore`] holds accounts, groups and queues; it is
//! deterministic (time and randomness come in as arguments) and is tested
//! without sockets.

pub mod conn;
pub mod core;
pub mod event_loop;
pub mod metrics;
pub mod os;
mod queue;
mod records;

pub use self::core::{
    CloseReason, ConnId, CoreError, CoreStats, RelayConfig, RelayCore, ReplayReport,
};
pub use self::event_loop::{RelayHandle, ServerConfig, ServerError, run_relay, spawn_relay};
