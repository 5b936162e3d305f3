"""`r2 evaluate` command (placeholder until the stage lands)."""
