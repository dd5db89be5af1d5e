//! The only crate allowed to use `unsafe`: it talks to the kernel.
