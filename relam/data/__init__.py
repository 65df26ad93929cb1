"""Datasets: expert demo videos and offline control datasets (HDF5), written atomically."""
