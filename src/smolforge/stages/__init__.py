"""Stages, in folders that read as the pipeline: sources -> shape -> synth -> judges
-> quality -> curate -> verify -> preferences -> assemble. `base` holds the stage
kinds and `llm` the LLM stage bases; every stage registers itself in
`smolforge.registry.stages` (docs/writing-a-stage.md)."""
