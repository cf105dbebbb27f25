"""The data: PASCAL VOC 2012 (``voc``; ``splits/`` holds the ids of the book's subset), finding or fetching it
(``download``), augmentation (``augment``), the frozen backbone's feature cache (``features``), and atomic file
writes (``atomic``), which the caches and the records use. Imports nothing else of seglab."""
