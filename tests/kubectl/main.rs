//! The real `kubectl` as the oracle of the emulated API server, one binary.

mod cli;
mod drain;
