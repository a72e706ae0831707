"""Export stage: stored data written in other tools' formats (nautilus_trader, hftbacktest)."""
