"""Judges: LLM scores by rubric or pairwise comparison, and the cheap classifiers trained on those scores (FineWeb-Edu)."""
