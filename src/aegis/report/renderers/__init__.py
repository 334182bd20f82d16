"""One renderer per ``kind`` of results: each draws its sections on a ``Page`` and returns
the HTML page. ``aegis.report.html`` picks the renderer by kind (``generic`` for any other)."""
