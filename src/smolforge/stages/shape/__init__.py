"""Shaping records before a prompt: knob columns (`vary`) and rendered prompts (`render`)."""
