"""Training infrastructure shared by the SFT and Draft-OPD jobs: train state and step, optimizer,
checkpoints, preemption, metrics, FLOP counts, training plots."""
