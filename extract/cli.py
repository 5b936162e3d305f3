"""`r2 extract` command (placeholder until the stage lands)."""
