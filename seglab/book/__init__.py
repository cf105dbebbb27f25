"""The book's own tools, on top of the package: a chapter's steps (``chapter``), its records (``results``), the
statistics of a comparison (``stats``) and its tables (``comparison``), profiling (``profile``) and the latency
table (``bench``), the protocol study (``study``), seed runs (``seeds``), bring-your-own-head (``compare``), figures
(``plots``, ``diagram``), the stride oracle (``oracle``), and the notebook tools (``export``, ``execute``)."""
