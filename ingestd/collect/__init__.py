"""collect stage: one run that fetches every public market-data REST endpoint (``ingestd collect``)."""
