"""Device meshes and sharding rules (one place for all of them)."""
