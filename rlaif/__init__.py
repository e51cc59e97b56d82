"""rlaif: a language model improves itself in rounds, judged by a constitution-prompted copy of itself.

Pipeline stages, one module each, in data-flow order:
prompts → generate → judge (→ rank) → pairs → train, strung together by ``rlaif.loop``.
"""

__version__ = "0.1.0"
