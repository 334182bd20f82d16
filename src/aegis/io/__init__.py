"""Loaders: model files, datasets and run directories."""
