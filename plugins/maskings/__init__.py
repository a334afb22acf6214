"""Built-in frame-masking strategies (``register_maskings``)."""
