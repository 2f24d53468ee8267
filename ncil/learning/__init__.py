"""Training and prediction: the task loop, optimiser, resumable state, numerics and device settings, FLOP counts."""
