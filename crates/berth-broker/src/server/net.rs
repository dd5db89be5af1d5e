//! Accept loops and the per-connection tokio task (plain TCP and TLS).
