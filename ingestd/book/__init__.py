"""book stage."""
