"""Stage 1: videos and queries into one multi-layer CLIP feature cache."""
