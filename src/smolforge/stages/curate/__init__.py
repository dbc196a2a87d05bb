"""Curation across records: deduplication and benchmark decontamination."""
