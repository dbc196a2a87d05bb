"""Synthesis: stages that write new text with an LLM (`generate`, Self-Instruct, Evol-Instruct, personas, Magpie)."""
