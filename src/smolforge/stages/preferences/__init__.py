"""Preference data (UltraFeedback): candidates from several teachers, ratings, chosen/rejected pairs."""
