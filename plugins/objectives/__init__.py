"""Built-in mertlab plugins."""
