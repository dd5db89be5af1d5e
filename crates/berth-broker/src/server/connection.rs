//! The connection state machine (sans-I/O): handshake, heartbeats, channels.
