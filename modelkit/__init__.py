"""Torch-free core shared by training and serving: manifest, registry, processing, runtimes."""
