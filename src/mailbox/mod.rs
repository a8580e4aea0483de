//! The relay's durable mailbox: a store trait, an in-memory twin and the
//! memory-mapped append-only segment store.
