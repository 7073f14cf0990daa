//! rota's coordinator: decides which node may be disrupted when, drains it, and holds the fleet's
//! safety invariants.

pub mod model;
