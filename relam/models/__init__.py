"""Learned models: the anticipation model (SPEC §4) and its image encoders."""
