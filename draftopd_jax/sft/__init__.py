"""Supervised drafter training: regenerated responses and fixed-shape batches, the on-disk target
feature cache, and the DFlash and EAGLE-3 losses."""
