//! # Hermes: end-to-end encrypted group messaging
//!
//! ```text
//!   client A ──┐                                       ┌── client B
//!   (src/client)│  frames (src/wire)                   │ (src/client)
//!   ┌──────────┴───────┐        ┌───────────────────┐  │
//!   │ session (pure)   │  TCP   │ relay event loop  │  │
//!   │  group::*  ◄─────┼────────┤  mio Poll + slab  ├──┘
//!   │  crypto::*       │        │  (src/relay)      │
//!   │ state (encrypted │        │        │          │
//!   │  file, flock)    │        │ relay core (pure) │
//!   └──────────────────┘        │  accounts, groups,│
//!                               │  queues, acks     │
//!                               │        │          │
//!                               │ mailbox (trait)   │──► sync thread (msync)
//!                               │  mmap segments    │
//!                               └───────────────────┘
//! ```
//!
//! The relay only routes and stores ciphertext: every key, every plaintext and
//! every signature over content lives in the clients. Arrows point downwards
//! only: shells (`relay::event_loop`, `client::net`, `cli`) import the pure
//! cores (`relay::core`, `client::session`, `group`, `crypto`, `wire`), never
//! the reverse. `ARCHITECTURE.md` has the module map and the data flow;
//! `PROTOCOL.md` has every byte.

pub mod cli;
pub mod client;
pub mod crypto;
pub mod demo;
pub mod fuzz;
pub mod group;
pub mod limits;
pub mod mailbox;
pub mod membership;
pub mod relay;
pub mod wire;
