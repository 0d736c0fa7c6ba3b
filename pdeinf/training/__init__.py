"""Training: SMSE and metrics (`loss`), recipes (`recipes`), the training loop with resume and
DDP (`train`), verified checkpoints (`checkpoints`), autoregressive rollouts (`rollout`)."""
