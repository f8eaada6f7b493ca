"""Data loading, validation, splitting and fingerprinting."""
