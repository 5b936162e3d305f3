"""`r2 train` command (placeholder until the stage lands)."""
