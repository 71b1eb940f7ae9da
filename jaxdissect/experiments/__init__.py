"""The paper's experiments as composable pieces: class metrics, ablation sweeps, and drivers."""
