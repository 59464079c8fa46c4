"""Storage of runs, events and checkpoints."""
