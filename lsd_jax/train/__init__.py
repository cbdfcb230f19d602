"""Training: state, optimizer, sharding, jitted steps, orbax checkpoints and the loop."""
