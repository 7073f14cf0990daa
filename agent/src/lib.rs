//! rota-agent.
