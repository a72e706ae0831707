"""consumers stage."""
