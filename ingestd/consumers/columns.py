"""Column builders: records become Arrow columns the moment the Parquet writer receives them.

Holding records as Python objects until a file is written was most of what storage cost (see
bench/README.md, lever 1): a 50-level depth diff is ~150 Python objects, and thousands of
records held for seconds kept the allocator, the cyclic GC and the CPU caches busy long after
every other consumer was done with them. A :class:`Columns` instead copies each record's fields
into per-column buffers (float64 and int64 values, validity bits, depth levels as one offsets and
two float64 buffers) as it arrives, so the record is freed as soon as the bus is done with it, and
a file's rows wait as ~8 bytes per value and 16 per level. :func:`to_table` turns the buffers into
an Arrow table without touching the values again (``pa.Array.from_buffers``).

Two implementations with the same interface: the compiled one (``ingestd/consumers/_ccolumns.c``)
and :class:`PyColumns` here, the reference and fallback (:mod:`ingestd.speedups`). Their tables
equal :func:`ingestd.consumers.schema.build_table` of the same records (``tests/test_columns.py``).
A record that does not fit its columns (a wrong type in a field) raises and leaves the builder as
it was: every column is rolled back to the previous row.
"""

from __future__ import annotations

import functools
import operator
from array import array
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol

import pyarrow as pa

from ingestd import speedups
from ingestd.consumers.schema import LEVEL_TYPE, LEVELS_TYPE, Column, _Kind, columns_for, schema_for
from ingestd.records import Level, Record

__all__ = ["Columns", "ColumnsLike", "PyColumns", "plan_for", "table_from_parts", "to_table"]

F64: Final = 0
I64: Final = 1
BOOL: Final = 2
OBJ: Final = 3
"""Any other value: kept in a list (strings, nullable booleans, JSON text), converted by pyarrow."""
LEVELS: Final = 4
NULLABLE: Final = 8
"""Added to a code: the value may be ``None``."""

Plan = tuple[tuple[str, int, Callable[[Any], Any] | None], ...]
"""Per stored column: (attribute, code, converter applied before storing an ``OBJ`` value)."""


class ColumnsLike(Protocol):
    """What the Parquet writer needs from a column builder."""

    @property
    def rows(self) -> int:
        """Rows appended."""

    @property
    def nbytes(self) -> int:
        """Bytes the appended values take (an estimate for ``OBJ`` columns: 8 per value)."""

    def append(self, record: Any) -> None:
        """Append one record's stored fields; on error nothing is appended."""

    def finish(self) -> list[tuple[Any, ...]]:
        """The columns' parts (see :func:`to_table`); the builder is empty afterwards."""


def _to_json(v: Any) -> str | None:
    import msgspec  # noqa: PLC0415 - only for the rare JSON-kind columns

    return None if v is None else msgspec.json.encode(v).decode()


def _enum_value(v: Any) -> Any:
    return None if v is None else v.value


def _code(col: Column) -> tuple[int, Callable[[Any], Any] | None]:
    if col.kind is _Kind.JSON:
        return OBJ, _to_json
    if col.kind is _Kind.ENUM:
        return OBJ, _enum_value
    t = col.type
    if t == LEVELS_TYPE and not col.nullable:
        return LEVELS, None
    base = {pa.float64(): F64, pa.int64(): I64, pa.bool_(): BOOL}.get(t)
    if base is None:
        return OBJ, None
    return base | (NULLABLE if col.nullable else 0), None


@functools.cache
def plan_for(record_type: type[Record]) -> Plan:
    """The column plan of ``record_type``: one entry per stored column, in schema order."""
    return tuple((c.name, *_code(c)) for c in columns_for(record_type))


# -- pure Python ------------------------------------------------------------------------------


def _converted(append: Callable[[Any], None], conv: Callable[[Any], Any], value: Any) -> None:
    append(conv(value))


def _no_fields(_record: Any) -> tuple[()]:
    return ()


class _LevelsColumn:
    __slots__ = ("offsets", "prices", "qtys")

    def __init__(self) -> None:
        self.offsets = array("i", [0])
        self.prices = array("d")
        self.qtys = array("d")

    def append(self, levels: Iterable[Level]) -> None:
        add_p, add_q = self.prices.append, self.qtys.append
        for p, q in levels:  # unpacking refuses anything but pairs, as the compiled one does
            add_p(p)
            add_q(q)
        self.offsets.append(len(self.prices))

    def truncate(self, rows: int) -> None:
        del self.offsets[rows + 1 :]
        end = self.offsets[rows]
        del self.prices[end:]
        del self.qtys[end:]


class PyColumns:
    """:class:`ColumnsLike` in pure Python: ``array`` buffers for non-null numbers, lists else."""

    __slots__ = ("_get", "_plan", "_store", "_values", "rows")

    def __init__(self, plan: Plan) -> None:
        self._plan = plan
        self._get: Callable[[Any], Any] = (
            operator.attrgetter(*(name for name, _, _ in plan)) if plan else _no_fields
        )
        self._values: list[Any] = []
        self._store: list[Callable[[Any], None]] = []
        self.rows = 0
        self._reset()

    def _reset(self) -> None:
        self._values = []
        self._store = []
        for _, code, conv in self._plan:
            col: Any
            if code == F64:
                col = array("d")
            elif code == I64:
                col = array("q")
            elif code == LEVELS:
                col = _LevelsColumn()
            else:
                col = []
            self._values.append(col)
            append: Callable[[Any], None] = col.append
            self._store.append(append if conv is None else functools.partial(_converted, append, conv))
        self.rows = 0

    @property
    def nbytes(self) -> int:
        total = 0
        for col in self._values:
            if isinstance(col, _LevelsColumn):
                total += 4 * len(col.offsets) + 16 * len(col.prices)
            else:
                total += 8 * len(col)
        return total

    def append(self, record: Any) -> None:
        values = self._get(record)
        if len(self._plan) == 1:
            values = (values,)
        try:
            for store, v in zip(self._store, values, strict=True):
                store(v)
        except Exception:
            for col in self._values:
                if isinstance(col, _LevelsColumn):
                    col.truncate(self.rows)
                else:
                    del col[self.rows :]
            raise
        self.rows += 1

    def finish(self) -> list[tuple[Any, ...]]:
        parts: list[tuple[Any, ...]] = []
        n = self.rows
        for (_, code, _), col in zip(self._plan, self._values, strict=True):
            if code in (F64, I64):
                parts.append((code, n, 0, None, col))
            elif code == LEVELS:
                parts.append((LEVELS, n, col.offsets, col.prices, col.qtys))
            else:
                parts.append((OBJ, col))
        self._reset()
        return parts


# -- parts → Arrow ----------------------------------------------------------------------------

_NUMBER: Final = {F64: pa.float64(), I64: pa.int64(), BOOL: pa.bool_()}


def _buffer(data: Any) -> pa.Buffer:
    return data if isinstance(data, pa.Buffer) else pa.py_buffer(data)


def _array(type_: pa.DataType, part: tuple[Any, ...]) -> pa.Array:
    code = part[0]
    if code == OBJ:
        return pa.array(part[1], type=type_)
    if code == LEVELS:
        _, n, offsets, prices, qtys = part
        m = memoryview(prices).nbytes // 8
        children = [
            pa.Array.from_buffers(pa.float64(), m, [None, _buffer(prices)]),
            pa.Array.from_buffers(pa.float64(), m, [None, _buffer(qtys)]),
        ]
        levels = pa.StructArray.from_arrays(children, fields=list(LEVEL_TYPE))
        return pa.Array.from_buffers(LEVELS_TYPE, n, [None, _buffer(offsets)], children=[levels])
    _, n, nulls, validity, data = part
    valid = None if validity is None or nulls == 0 else _buffer(validity)
    return pa.Array.from_buffers(_NUMBER[code & ~NULLABLE], n, [valid, _buffer(data)], null_count=nulls)


def to_table(record_type: type[Record], parts: Sequence[tuple[Any, ...]]) -> pa.Table:
    """The Arrow table of a builder's :meth:`~ColumnsLike.finish` parts (schema of the type).

    Part shapes: ``(F64|I64|BOOL [+NULLABLE], rows, null_count, validity bits or None, values)``
    (buffers in Arrow's layout: little-endian values, LSB-first bits), ``(LEVELS, rows, int32
    offsets, prices, qtys)`` and ``(OBJ, list)``.
    """
    return table_from_parts(schema_for(record_type), parts)


def table_from_parts(schema: pa.Schema, parts: Sequence[tuple[Any, ...]]) -> pa.Table:
    """:func:`to_table` given the schema instead of the record type (the writer process, which
    never sees the record classes, gets the schema with the parts)."""
    arrays = [_array(f.type, p) for f, p in zip(schema, parts, strict=True)]
    return pa.Table.from_arrays(arrays, schema=schema)


_compiled = speedups.load("ingestd.consumers._ccolumns")
if TYPE_CHECKING or _compiled is None:  # noqa: SIM108 - mypy types the pure-Python class
    Columns = PyColumns
else:
    Columns = _compiled.Columns
