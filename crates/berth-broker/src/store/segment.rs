//! Message segment files: record format, writer thread, replay.
