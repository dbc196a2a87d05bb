"""Engines: how text is generated; each registers itself in `smolforge.registry.engines`."""
