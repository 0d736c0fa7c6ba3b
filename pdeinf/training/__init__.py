"""Training: SMSE and metrics (`loss`), the training loop with resume and DDP (`train`, `ddp`),
autoregressive rollouts (`rollout`)."""
