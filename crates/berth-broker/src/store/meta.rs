//! Metadata log and snapshot.
