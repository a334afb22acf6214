"""Built-in training callbacks."""
