"""Hyperparameter sweeps and scaling-law studies around the AEMG pretraining core."""
