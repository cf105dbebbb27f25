"""seglab: the small shared package behind the seglab book on semantic-segmentation decode heads."""

__version__ = "0.1.0"
