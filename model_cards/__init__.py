"""Model cards for published VLP checkpoints (templates and the code that fills them from a run)."""
