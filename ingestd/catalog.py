"""Every record type of every stage, registered in :data:`ingestd.records.RECORD_TYPES`.

Stages define their own record types (gap log and book views in ``book``, clock samples in
``observe``, REST poller rows and contract definitions in ``producers``) and register them on
import. A reader that may meet any channel (``ingestd tail``, ``ingestd report``) imports this module first.
"""

from __future__ import annotations

import ingestd.book.records
import ingestd.observe.records
import ingestd.producers.contract_records
import ingestd.producers.poller_records  # noqa: F401 - imported for their registration
from ingestd.records import RECORD_TYPES

__all__ = ["RECORD_TYPES"]
