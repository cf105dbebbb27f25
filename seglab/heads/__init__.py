"""Decode heads, exported from the chapters' notebooks by ``python -m seglab.book.export`` (edit the notebooks)."""
