"""Reading published PyTorch checkpoints without torch, and converting them to Flax."""
