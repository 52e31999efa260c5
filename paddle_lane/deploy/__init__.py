"""Export (checkpoints -> a self-contained folder) and the runtimes that load it."""
