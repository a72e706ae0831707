"""NATS JetStream publisher: every record to ``<prefix>.<venue>.<channel>.<SYMBOL>``.

Wire format (one JetStream message per record): the record's fields plus ``"channel"`` (first
key), levels as ``[[price, qty], …]``; JSON by default, MessagePack with ``format: msgpack`` (both
through msgspec, a core dependency, so neither needs an extra package). Floats are written in
their shortest round-trip form, so :func:`decode_record` rebuilds a record equal to the original.
Each message carries a ``Nats-Msg-Id`` header (:func:`message_id`) built from the venue, channel,
native symbol and the record's identity from the channel table (update id, trade id …, plus a
content digest where those are not unique): JetStream's duplicate window drops the copies a
reconnect, a make-before-break rotation or a retry would publish, and nothing else.

The publisher never holds the bus up. :meth:`NatsPublisher.consume` only appends to a bounded
buffer (policy ``drop_oldest``: drops are counted and logged once per episode) and returns; one
background task owns the connection, creates or updates the stream, and publishes with at most
``max_inflight`` unacknowledged messages. nats-py reconnects forever; messages whose ack did not
come back (lost with the connection, or later than ``ack_timeout_s``) are published again under
the same id, which JetStream deduplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import deque
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal

import msgspec
import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ingestd.errors import ConfigError, ParseError, StartupError
from ingestd.records import RECORD_TYPES, AnyRecord, Record
from ingestd.venues.binance.channels import channel_spec

log = logging.getLogger("ingestd.nats")

Format = Literal["json", "msgpack"]

SUBJECT_TOKEN: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""What one subject token (venue, channel, symbol, prefix part) may look like: no ``.``, ``*``,
``>``, whitespace or control characters, which would change the subject's meaning."""

MSG_ID_HEADER: Final = "Nats-Msg-Id"
MAX_ATTEMPTS: Final = 8
"""Publishes of one message before it is counted as failed (the stream keeps refusing it)."""


class NatsSettings(BaseModel):
    """The JetStream publisher (``ingestd[nats]``); off while ``url`` is ``None``."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    url: str | None = None
    """``nats://HOST:PORT`` (``tls://`` too; a comma list names a cluster)."""
    stream: str = "INGESTD"
    subject_prefix: str = "ingestd"
    max_age_s: Annotated[float, Field(gt=0)] | None = 86_400.0
    """Stream retention by age; ``None`` keeps messages until ``max_bytes`` says otherwise."""
    max_bytes: Annotated[int, Field(gt=0)] | None = None
    """Stream retention by size (oldest discarded first); ``None`` = no size limit."""
    duplicate_window_s: Annotated[float, Field(gt=0)] = 120.0
    max_inflight: Annotated[int, Field(gt=0)] = 1000
    """Published but not yet acknowledged messages, at most."""
    buffer_records: Annotated[int, Field(gt=0)] = 100_000
    """Records held while NATS is slow or away; past this the oldest are dropped and counted."""
    format: Format = "json"
    connect_timeout_s: Annotated[float, Field(gt=0)] = 5.0
    """How long start-up waits for the first connection before going on and buffering."""
    reconnect_wait_s: Annotated[float, Field(gt=0)] = 2.0
    ack_timeout_s: Annotated[float, Field(gt=0)] = 5.0
    close_timeout_s: Annotated[float, Field(gt=0)] = 5.0
    """Shutdown: how long to keep publishing what is buffered before giving up on it."""

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        for server in v.split(","):
            if not re.fullmatch(r"(nats|tls|ws|wss)://[^\s/,]+/?", server.strip()):
                raise ValueError(f"{server.strip()!r} is not a nats://HOST:PORT URL")
        return v

    @field_validator("stream")
    @classmethod
    def _stream(cls, v: str) -> str:
        if not SUBJECT_TOKEN.fullmatch(v):
            raise ValueError(f"stream name {v!r}: use letters, digits, '_' or '-' (at most 64)")
        return v

    @field_validator("subject_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not all(SUBJECT_TOKEN.fullmatch(t) for t in v.split(".")):
            raise ValueError(f"subject prefix {v!r}: dot-separated tokens of letters, digits, '_' or '-'")
        return v

    @model_validator(mode="after")
    def _window_within_age(self) -> NatsSettings:
        if self.max_age_s is not None and self.duplicate_window_s > self.max_age_s:
            raise ValueError("duplicate_window_s cannot exceed max_age_s (JetStream refuses the stream)")
        return self

    @property
    def servers(self) -> list[str]:
        return [s.strip() for s in (self.url or "").split(",") if s.strip()]


# --- codec (pure) ---------------------------------------------------------------------------------

_json_encoder = msgspec.json.Encoder()
_msgpack_encoder = msgspec.msgpack.Encoder()
_json_decoders: dict[type[Record], msgspec.json.Decoder[Record]] = {}
_CHANNEL_HEAD = b'{"channel":"'


def subject_for(prefix: str, record: Record) -> str | None:
    """``<prefix>.<venue>.<channel>.<native>``, or ``None`` if a token is not subject-safe."""
    for token in (record.venue, record.channel, record.native):
        if not SUBJECT_TOKEN.fullmatch(token):
            return None
    return f"{prefix}.{record.venue}.{record.channel}.{record.native}"


def message_id(record: Record) -> str:
    """``venue:channel:native:key``, the key being the record's identity (the channel table's).

    Update ids for book data, trade/agg ids for trades, ``open_time:exchange_ts`` for a kline
    (a bar is updated many times); where those fields are not unique (event-time keyed channels,
    the gap log), a digest of the content follows them (``exchange_ts:<16 hex>``,
    ``kind:started_ts:<16 hex>``).
    """
    key = channel_spec(record.venue, type(record)).message_key(record)
    return f"{record.venue}:{record.channel}:{record.native}:{key}"


def encode_record(record: Record, fmt: Format = "json") -> bytes:
    """The message payload: the record's fields plus ``"channel"``."""
    if fmt == "json":
        body = _json_encoder.encode(record)
        # A record always has fields, so body is '{"venue":…}': splice the channel in as the
        # first key instead of building a dict per record.
        return _CHANNEL_HEAD + record.channel.encode() + b'",' + body[1:]
    return _msgpack_encoder.encode({"channel": record.channel, **msgspec.structs.asdict(record)})


def _record_type(channel: str) -> type[Record]:
    cls = RECORD_TYPES.get(channel)
    if cls is None:
        raise ParseError(f"unknown channel {channel!r}", stream=channel)
    return cls


def decode_record(channel: str, data: bytes | Mapping[str, Any]) -> Record:
    """Rebuild the ``channel`` record from a payload (JSON or MessagePack bytes) or a mapping.

    Raises :class:`ParseError` on an unknown channel or a payload of the wrong shape.
    """
    cls = _record_type(channel)
    try:
        if isinstance(data, Mapping):
            return msgspec.convert(data, cls)
        if data[:1] == b"{":
            dec = _json_decoders.get(cls)
            if dec is None:
                dec = _json_decoders[cls] = msgspec.json.Decoder(cls)
            return dec.decode(data)
        return msgspec.msgpack.decode(data, type=cls)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ParseError(str(exc), stream=channel) from exc


def decode_message(data: bytes) -> Record:
    """Rebuild a record from a payload alone, reading its ``"channel"`` key."""
    if data.startswith(_CHANNEL_HEAD):
        end = data.find(b'"', len(_CHANNEL_HEAD))
        if end > 0:
            return decode_record(data[len(_CHANNEL_HEAD) : end].decode(), data)
    try:
        obj = orjson.loads(data) if data[:1] == b"{" else msgspec.msgpack.decode(data)
    except (orjson.JSONDecodeError, msgspec.DecodeError) as exc:
        raise ParseError(f"not a JSON or MessagePack record: {exc}") from exc
    if not isinstance(obj, dict) or not isinstance(obj.get("channel"), str):
        raise ParseError("payload has no 'channel' key")
    return decode_record(obj["channel"], obj)


# --- publisher --------------------------------------------------------------------------------------


_COUNTERS: Final = (
    "buffered_total", "buffer_dropped", "refused_unsafe", "sent", "acked", "duplicates", "retried",
    "failed", "late_acks", "disconnects", "reconnects", "unpublished_at_close", "lost_after_close",
)  # fmt: skip


class _Msg:
    __slots__ = ("attempts", "msg_id", "payload", "sent_at", "subject")

    def __init__(self, subject: str, msg_id: str, payload: bytes) -> None:
        self.subject = subject
        self.msg_id = msg_id
        self.payload = payload
        self.attempts = 0
        self.sent_at = 0.0


class NatsPublisher:
    """Bus consumer publishing every market record to JetStream. Owns its connection and task.

    ``status`` is ``new`` → ``connecting`` → ``connected`` ⇄ ``disconnected`` → ``closing`` →
    ``closed``. :meth:`stats` counts what was buffered, acknowledged, deduplicated, dropped,
    refused for an unsafe subject and left unpublished at close.
    """

    def __init__(self, settings: NatsSettings, *, name: str = "nats") -> None:
        if settings.url is None:
            raise ConfigError("nats.url is not set (want nats://HOST:PORT)", key="nats.url")
        self.name = name
        self.channels: frozenset[str] | None = None
        self.settings = settings
        self.status = "new"
        self._nc: Any = None  # nats.aio.client.Client, imported lazily (ingestd[nats] is optional)
        self._task: asyncio.Task[None] | None = None
        self._close_task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._wake = asyncio.Event()
        self._closing = False
        self._final = False
        """The publishing task has ended (close): a record consumed now can never be sent."""
        self._start_error: BaseException | None = None
        self._subjects: dict[tuple[str, str, str], str | None] = {}
        self._buffer: deque[Record] = deque(maxlen=settings.buffer_records)
        self._retry: deque[_Msg] = deque()
        self._inflight: dict[int, _Msg] = {}  # reply sequence → message, in send order
        self._seq = 0
        self._reply_prefix = ""
        self._need_stream = True
        self._requeue_inflight = False
        self._episode_drops = 0
        self._error_logged = False
        self._fail_logged = False
        self.counters: dict[str, int] = dict.fromkeys(_COUNTERS, 0)
        self._high_water = 0

    # -- Consumer protocol ----------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and create/update the stream, waiting at most ``connect_timeout_s``.

        An unreachable server is not fatal (records are buffered and the connection retried);
        a stream JetStream refuses to create is a :class:`StartupError`.
        """
        try:
            from nats.aio.client import Client  # noqa: PLC0415 - optional dependency (ingestd[nats])
        except ImportError as exc:
            raise ConfigError("NATS output needs nats-py: pip install ingestd[nats]", key="nats.url") from exc
        self._nc = Client()
        self.status = "connecting"
        self._task = asyncio.create_task(self._run(), name=f"{self.name}:publisher")
        waiter = asyncio.create_task(self._ready.wait())
        try:
            await asyncio.wait(
                {waiter, self._task},
                timeout=self.settings.connect_timeout_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            waiter.cancel()
        if self._start_error is not None:
            raise StartupError(f"nats: {self._start_error}") from self._start_error
        if not self._ready.is_set():
            log.warning("nats: %s not reachable yet; buffering up to %d records", self.settings.url,
                        self.settings.buffer_records)  # fmt: skip

    async def consume(self, batch: list[AnyRecord]) -> None:
        """Buffer ``batch`` for the publishing task. Never waits on NATS. After :meth:`close`
        nothing publishes any more: the records are counted ``lost_after_close``."""
        if self._final:
            self._lost_after_close(batch)
            return
        buf = self._buffer
        before = len(buf)
        taken = 0
        for rec in batch:
            if not isinstance(rec, Record):
                continue
            if self._subject(rec) is None:
                self.counters["refused_unsafe"] += 1
                continue
            buf.append(rec)  # a full deque(maxlen) discards its oldest entry
            taken += 1
        dropped = before + taken - len(buf)
        self.counters["buffered_total"] += taken
        if dropped:
            if self._episode_drops == 0:
                log.warning("nats: buffer full (%d records, NATS %s): dropping the oldest",
                            self.settings.buffer_records, self.status)  # fmt: skip
            self._episode_drops += dropped
            self.counters["buffer_dropped"] += dropped
        self._high_water = max(self._high_water, len(buf))
        if taken:
            self._wake.set()

    def _lost_after_close(self, batch: list[AnyRecord]) -> None:
        n = sum(1 for rec in batch if isinstance(rec, Record))
        if not n:
            return
        if not self.counters["lost_after_close"]:
            log.error("nats: %d record(s) arrived after close and are lost; counting further ones", n)
        self.counters["lost_after_close"] += n

    async def close(self) -> None:
        """Publish what is buffered within ``close_timeout_s``, then disconnect. Idempotent."""
        if self._close_task is None:
            self._close_task = asyncio.create_task(self._close(), name=f"{self.name}:close")
        # Shielded so a caller cancelled by its own deadline does not abort the close half-way.
        await asyncio.shield(self._close_task)

    def stats(self) -> dict[str, Any]:
        """A snapshot for metrics. Names avoid the bus queue's own keys (``dropped`` …)."""
        return {
            "status": self.status,
            "connected": bool(self._nc is not None and self._nc.is_connected),
            "buffered": len(self._buffer),
            "buffer_high_water": self._high_water,
            "awaiting_ack": len(self._inflight),
            "retry_queued": len(self._retry),
            **self.counters,
        }

    # -- internals -------------------------------------------------------------------------------

    def _subject(self, rec: Record) -> str | None:
        key = (rec.venue, rec.channel, rec.native)
        try:
            return self._subjects[key]
        except KeyError:
            pass
        subject = subject_for(self.settings.subject_prefix, rec)
        if subject is None:
            log.warning("nats: refusing %s %s %r: not safe in a subject", rec.venue, rec.channel, rec.native)
        if len(self._subjects) >= 65_536:  # bounded even if a venue sent endless new names
            self._subjects.clear()
        self._subjects[key] = subject
        return subject

    def _connect_options(self) -> dict[str, Any]:
        s = self.settings
        return {
            "servers": s.servers,
            "name": f"ingestd-{self.name}",
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,  # forever: the buffer absorbs the outage meanwhile
            "reconnect_time_wait": s.reconnect_wait_s,
            "connect_timeout": s.connect_timeout_s,
            "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
            "error_cb": self._on_error,
        }

    async def _run(self) -> None:
        """The owner task: connect (retried forever by nats-py), then publish until closed."""
        nc = self._nc
        try:
            await nc.connect(**self._connect_options())
            self._reply_prefix = nc.new_inbox() + "."
            await nc.subscribe(self._reply_prefix + "*", cb=self._on_ack)
            self.status = "closing" if self._closing else "connected"
            self._error_logged = False
            where = nc.connected_url.netloc if nc.connected_url else self.settings.url
            log.info("nats: connected to %s", where)
            await self._ensure_stream(first=True)
        except StartupError as exc:
            self._start_error, self.status = exc, "failed"
            log.error("nats: %s", exc)  # noqa: TRY400 - the cause is in the message; no traceback needed
            return
        except Exception as exc:
            self._start_error, self.status = exc, "failed"
            log.exception("nats: could not connect to %s", self.settings.url)
            return
        self._ready.set()
        while True:
            try:
                await self._pump()
            except Exception:
                # A bug here must not end publishing for the rest of the run: log, pause, go on.
                log.exception("nats: publisher loop failed; restarting it")
                await asyncio.sleep(self.settings.reconnect_wait_s)
            else:
                return

    async def _ensure_stream(self, *, first: bool = False) -> None:
        """Create the stream, or update it to the configured subjects and limits."""
        from nats.errors import Error as NatsError  # noqa: PLC0415
        from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig  # noqa: PLC0415
        from nats.js.errors import APIError, NotFoundError  # noqa: PLC0415

        s = self.settings
        subject = f"{s.subject_prefix}.>"
        js = self._nc.jetstream(timeout=s.ack_timeout_s)
        delay = s.reconnect_wait_s
        while True:
            try:
                try:
                    info = await js.stream_info(s.stream)
                except NotFoundError:
                    await js.add_stream(StreamConfig(
                        name=s.stream, subjects=[subject], retention=RetentionPolicy.LIMITS,
                        discard=DiscardPolicy.OLD, storage=StorageType.FILE,
                        max_age=s.max_age_s or 0, max_bytes=s.max_bytes or -1,
                        duplicate_window=s.duplicate_window_s,
                    ))  # fmt: skip
                    log.info("nats: created stream %s on %s", s.stream, subject)
                else:
                    # Keep what an operator set (storage, replicas, extra subjects); ours are added.
                    subjects = sorted({*(info.config.subjects or ()), subject})
                    await js.update_stream(info.config.evolve(
                        subjects=subjects, max_age=s.max_age_s or 0, max_bytes=s.max_bytes or -1,
                        duplicate_window=s.duplicate_window_s,
                    ))  # fmt: skip
                    log.info("nats: stream %s ready (%d messages stored)", s.stream, info.state.messages)
            except APIError as exc:
                # The server answered and said no (overlapping subjects, bad limits): not a blip.
                if first:
                    raise StartupError(f"stream {s.stream}: {exc.description or exc}") from exc
                # The server's answer is the whole story; a traceback would add nothing (TRY400).
                log.error("nats: stream %s refused: %s; retrying in %.0f s", s.stream, exc, delay)  # noqa: TRY400
            except (NatsError, TimeoutError, OSError) as exc:
                log.warning("nats: stream %s not ready (%s); retrying", s.stream, type(exc).__name__)
            else:
                self._need_stream = False
                return
            if self._closing:
                return
            await self._sleep(delay)
            delay = min(delay * 2, 30.0)

    async def _sleep(self, seconds: float) -> None:
        """Wait until woken (new records, an ack, a reconnect, close) or ``seconds`` pass."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        self._wake.clear()

    async def _pump(self) -> None:
        nc = self._nc
        s = self.settings
        tick = min(s.ack_timeout_s / 2, 1.0)
        while True:
            if self._requeue_inflight:
                self._requeue_inflight = False
                self._requeue_all()
            self._sweep(time.monotonic())
            if self._closing and not (self._buffer or self._retry or self._inflight):
                return
            if not nc.is_connected:
                await self._sleep(tick)
                continue
            if self._need_stream:
                await self._ensure_stream()
                continue
            room = s.max_inflight - len(self._inflight)
            if room <= 0 or not (self._retry or self._buffer):
                await self._sleep(tick)
                continue
            # Bounded per round so a deep buffer still lets the loop's other tasks run.
            for _ in range(min(room, 1024)):
                msg = self._next_message()
                if msg is None:
                    break
                if not await self._send(msg):
                    break
            self._end_drop_episode()
            await asyncio.sleep(0)

    def _next_message(self) -> _Msg | None:
        if self._retry:
            return self._retry.popleft()
        while self._buffer:
            rec = self._buffer.popleft()
            subject = self._subject(rec)
            if subject is None:  # cache was cleared and the name re-checked: still unsafe
                self.counters["refused_unsafe"] += 1
                continue
            return _Msg(subject, message_id(rec), encode_record(rec, self.settings.format))
        return None

    async def _send(self, msg: _Msg) -> bool:
        from nats.errors import Error as NatsError  # noqa: PLC0415
        from nats.errors import MaxPayloadError  # noqa: PLC0415

        self._seq += 1
        seq = self._seq
        msg.attempts += 1
        msg.sent_at = time.monotonic()
        self._inflight[seq] = msg  # before publishing: the ack may race the return
        try:
            await self._nc.publish(msg.subject, msg.payload, reply=f"{self._reply_prefix}{seq}",
                                   headers={MSG_ID_HEADER: msg.msg_id})  # fmt: skip
        except MaxPayloadError:
            del self._inflight[seq]
            self._fail(msg, "larger than the server's max_payload")
            return True
        except (NatsError, OSError):
            # Connection lost under us: put it back first in line and wait for the reconnect.
            del self._inflight[seq]
            msg.attempts -= 1
            self._retry.appendleft(msg)
            return False
        self.counters["sent"] += 1
        return True

    async def _on_ack(self, reply: Any) -> None:
        try:
            seq = int(reply.subject[len(self._reply_prefix) :])
        except ValueError:
            return
        msg = self._inflight.pop(seq, None)
        self._wake.set()
        if msg is None:
            # Timed out earlier and already re-sent; that copy will be deduplicated.
            self.counters["late_acks"] += 1
            return
        headers = reply.headers
        if headers and headers.get("Status") == "503":
            self._need_stream = True  # no responders: the stream is gone (deleted, fresh server)
            self._retry_later(msg, "no stream answered")
            return
        try:
            resp = orjson.loads(reply.data)
        except orjson.JSONDecodeError:
            resp = None
        if not isinstance(resp, dict):
            self._retry_later(msg, "unreadable ack")
            return
        err = resp.get("error")
        if err:
            self._retry_later(msg, str(err.get("description", err)) if isinstance(err, dict) else str(err))
            return
        self.counters["acked"] += 1
        if resp.get("duplicate"):
            self.counters["duplicates"] += 1
        self._fail_logged = False

    def _retry_later(self, msg: _Msg, reason: str) -> None:
        if msg.attempts >= MAX_ATTEMPTS:
            self._fail(msg, reason)
            return
        self.counters["retried"] += 1
        self._retry.append(msg)

    def _fail(self, msg: _Msg, reason: str) -> None:
        self.counters["failed"] += 1
        if not self._fail_logged:
            self._fail_logged = True
            log.error("nats: gave up on %s after %d attempts: %s; counting further failures", msg.msg_id,
                      msg.attempts, reason)  # fmt: skip

    def _sweep(self, now: float) -> None:
        """Re-send messages whose ack is overdue (their ack or the message itself was lost)."""
        limit = now - self.settings.ack_timeout_s
        stale = []
        for seq, msg in self._inflight.items():
            if msg.sent_at > limit:
                break  # send order: everything after is younger
            stale.append(seq)
        for seq in stale:
            self._retry_later(self._inflight.pop(seq), "no ack in time")

    def _requeue_all(self) -> None:
        msgs = list(self._inflight.values())
        self._inflight.clear()
        for msg in msgs:
            self._retry_later(msg, "connection lost before the ack")

    def _end_drop_episode(self) -> None:
        if self._episode_drops and len(self._buffer) < self.settings.buffer_records // 2:
            log.warning("nats: buffer recovered: dropped %d records in that episode", self._episode_drops)
            self._episode_drops = 0

    async def _on_disconnected(self) -> None:
        if self._closing:
            return  # our own close, or an outage during it: close() reports what was left
        self.counters["disconnects"] += 1
        self.status = "disconnected"
        log.warning("nats: disconnected from %s; buffering up to %d records", self.settings.url,
                    self.settings.buffer_records)  # fmt: skip

    async def _on_reconnected(self) -> None:
        self.counters["reconnects"] += 1
        self.status = "closing" if self._closing else "connected"
        self._error_logged = False
        # Acks of messages sent before the cut may never come: send them again now (deduplicated).
        self._requeue_inflight = True
        self._need_stream = True  # a fresh server (no store) has no stream any more
        log.info("nats: reconnected to %s; re-sending %d unacknowledged", self.settings.url,
                 len(self._inflight))  # fmt: skip
        self._wake.set()

    async def _on_error(self, exc: Exception) -> None:
        # nats-py reports every failed reconnect attempt: log the first of each outage only.
        if not self._error_logged:
            self._error_logged = True
            log.warning("nats: %s: %s", type(exc).__name__, exc)
        else:
            log.debug("nats: %s: %s", type(exc).__name__, exc)

    async def _close(self) -> None:
        self._closing = True
        if self.status not in ("new", "closed"):
            self.status = "closing"
        self._wake.set()
        task = self._task
        if task is not None and not task.done():
            if self._ready.is_set():
                with contextlib.suppress(TimeoutError):
                    # shield: on expiry the timeout cancels the wait, not the task; we do that below.
                    async with asyncio.timeout(self.settings.close_timeout_s):
                        await asyncio.shield(task)
            if not task.done():
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._final = True
        left = len(self._buffer) + len(self._retry) + len(self._inflight)
        self.counters["unpublished_at_close"] = left
        if left:
            log.warning("nats: closing with %d records unpublished (%d awaiting ack)", left,
                        len(self._inflight))  # fmt: skip
        nc = self._nc
        if nc is not None and not nc.is_closed:
            # Best effort: the connection may be half-dead; nothing useful is left to report.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.settings.close_timeout_s):
                    await nc.close()
        self.status = "closed"
        c = self.counters
        log.info("nats: closed (%d acknowledged, %d duplicates, %d dropped, %d failed)", c["acked"],
                 c["duplicates"], c["buffer_dropped"], c["failed"])  # fmt: skip
