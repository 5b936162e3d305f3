"""Stage 2: the R² model and its training loop."""
