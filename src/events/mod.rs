//! Webhook notifications of pushes and deletes, read from the audit trail.

pub mod config;
