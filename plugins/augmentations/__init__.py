"""Built-in augmentations of the student input (``register_augmentations``)."""
