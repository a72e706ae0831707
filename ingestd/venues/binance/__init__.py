"""venues/binance stage."""
