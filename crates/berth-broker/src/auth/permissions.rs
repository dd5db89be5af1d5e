//! Compiled permission regexes.
