"""Source stages: where records come from (files, inline items, combinations of
lists, seeds for textbook prompts, chunks of long documents). The names of the old
`smolforge.stages.sources` module are re-exported here."""

from smolforge.stages.sources.read import Combine, InputError, Items, Read

__all__ = ["Combine", "InputError", "Items", "Read"]
