"""Stages: one module per family; each registers itself in `smolforge.registry.stages`."""
