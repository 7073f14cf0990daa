//! rota-sim.
