"""One module per container format; dispatch.py routes buffers to them by content."""
