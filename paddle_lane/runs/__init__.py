"""A run folder's files: checkpoints (save, verify, pick) and the run folder (claim, reuse, resume)."""
