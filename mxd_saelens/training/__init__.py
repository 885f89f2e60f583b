"""Training: runner configs, the runner and trainer, data parallelism and warm starts."""
