"""Audio data: file discovery and decoding, crop datasets, the Lightning DataModule, demo data."""
