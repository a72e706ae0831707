"""ingestd: a Binance market-data ingestion daemon."""

from ingestd.records import CHANNELS, Record

__all__ = ["CHANNELS", "Record", "__version__"]
__version__ = "0.1.0"
