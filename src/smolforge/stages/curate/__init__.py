"""Curation across records: deduplication (with `dedup_index`, what earlier runs
kept, as hashes) and benchmark decontamination."""
