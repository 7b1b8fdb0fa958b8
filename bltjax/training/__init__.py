"""Training: the Trainer and its config, the optimiser, the losses and the BLT-D objective,
checkpoints and the warm start from a trained BLT.

docs/architecture.md, "Package layout"."""
