"""Shared building blocks: vision encoder, projectors, language backbone."""
