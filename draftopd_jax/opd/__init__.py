"""Draft-OPD: the anchor plan of a rollout, the replay of drafting with gradients, the two-stream
losses, and the update step (rollout, replay and update in one jitted function)."""
