"""Rationale diagnostics: is an answer caused by its rationale, which steps carry information, and
which sampled rationales to trust."""
