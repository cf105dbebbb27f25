"""Decode heads, exported from the chapters' notebooks by ``python -m seglab.export`` (edit the notebooks)."""
