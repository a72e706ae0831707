"""producers stage."""
