"""Device agent and fleet simulator."""
