"""Venue definitions: endpoint tables, stream names and pure parsers."""
