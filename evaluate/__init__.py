"""Scoring: benchmark metrics, post-processing and inference over a split."""
