"""Groups in Redis streams: admission, batches, acks, rejections, dead letters.

Every write that touches more than one key is one Lua script, so a crash (of
this process or of Redis with AOF) never leaves a group half stored or a blob
reference half released. Key names: ``asyncwebrl.common.keys``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
import zlib

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, ResponseError

from asyncwebrl.buffer.config import BufferConfig
from asyncwebrl.buffer.errors import Conflict, Exhausted, InvalidArgument, NotFound, Unavailable
from asyncwebrl.buffer.validate import GroupSummary
from asyncwebrl.common.blobstore import LUA_LIB, BlobStore
from asyncwebrl.common.keys import CONSUMER_GROUP, blob_bytes_key, job_prefix, jobs_key
from asyncwebrl.v1 import buffer_pb2

log = logging.getLogger("asyncwebrl.buffer")

REJECT_REASONS = ("stale", "zero_variance")
BATCH_TTL_S = 7 * 86400
ADMISSION_CACHE_S = 1.0
PAYLOAD_TTL_S = 120  # a payload whose group was refused (or whose writer died) lives this long
# PutGroups that arrive while a put pipeline is in flight go to Redis together in the
# next one (a group commit), at most this many groups or bytes at a time.
PUT_BATCH_GROUPS = 32
PUT_BATCH_BYTES = 32 * 1024 * 1024

# The group's bytes go in first, in their own key (``J data:<gid>``, SET NX with a
# short TTL), in the same pipeline as this script: Redis copies a 500 KB argument
# into Lua and out again at twice the cost of a plain write. The script makes the
# payload permanent only when it stores the entry; a refused group's payload
# expires on its own.
# ARGV: jp, gbytes, jobs, job, gid, minv, maxv, steps, zv, blobs, cap, dedup_s, tokens, crc, size
# -> {0, id} stored, {1, id} duplicate, {-1, len} stream full, {-2, sha} blob missing,
#    {-3, ''} payload key gone (expired between the two commands: write it again)
_PUT_GROUP = LUA_LIB + r"""
local jp, gbytes, jobs, job, gid = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local cap = tonumber(ARGV[11])
local counters = jp .. 'counters'
local gidkey = jp .. 'gid:' .. gid
local existing = redis.call('GET', gidkey)
if existing then
  redis.call('HINCRBY', counters, 'duplicate', 1)
  return {1, existing}
end
local stream = jp .. 'groups'
local length = redis.call('XLEN', stream)
if length >= cap then return {-1, tostring(length)} end
local shas = split(ARGV[10])
local missing = missing_blob(jp, shas)
if missing then return {-2, missing} end
local datakey = jp .. 'data:' .. gid
if redis.call('EXISTS', datakey) == 0 then return {-3, ''} end
if redis.call('EXISTS', stream) == 0 then
  redis.call('XGROUP', 'CREATE', stream, 'trainers', '0', 'MKSTREAM')
end
ref_blobs(jp, shas)
redis.call('PERSIST', datakey)
-- The admission check above keeps the stream under cap, so MAXLEN ~ never trims
-- a live entry; it bounds the stream should the check ever be bypassed.
local id = redis.call('XADD', stream, 'MAXLEN', '~', cap, '*', 'gid', gid, 'minv', ARGV[6],
  'maxv', ARGV[7], 'steps', ARGV[8], 'zv', ARGV[9], 'blobs', ARGV[10], 'tokens', ARGV[13], 'crc', ARGV[14], 'size', ARGV[15])
redis.call('SET', gidkey, id, 'EX', tonumber(ARGV[12]))
redis.call('HINCRBY', counters, 'accepted', 1)
redis.call('HINCRBY', counters, 'steps_accepted', tonumber(ARGV[8]))
redis.call('HINCRBY', counters, 'group_bytes', tonumber(ARGV[15]))
redis.call('SADD', jobs, job)
return {0, id}
"""

_ENTRY_LIB = r"""
local function entry_fields(stream, id)
  local rows = redis.call('XRANGE', stream, id, id)
  if #rows == 0 then return nil end
  local f, out = rows[1][2], {}
  for i = 1, #f, 2 do out[f[i]] = f[i + 1] end
  return out, f
end
local function valid_shas(text)
  local out = {}
  for _, sha in ipairs(split(text)) do
    if #sha == 64 and string.match(sha, '^[0-9a-f]+$') then out[#out + 1] = sha end
  end
  return out
end
local function remove_entry(jp, gbytes, stream, id, grace, now)
  local fields = entry_fields(stream, id)
  redis.call('XACK', stream, 'trainers', id)
  if not fields then return 0 end
  release_blobs(jp, gbytes, valid_shas(fields['blobs']), grace, now)
  if fields['gid'] then redis.call('DEL', jp .. 'data:' .. fields['gid']) end
  local size = tonumber(fields['size']) or 0
  if size > 0 then redis.call('HINCRBY', jp .. 'counters', 'group_bytes', -size) end
  redis.call('XDEL', stream, id)
  return tonumber(fields['steps']) or 0
end
"""

# ARGV: jp, gbytes, id, reason, grace_ms -> steps of the removed entry
_REJECT = LUA_LIB + _ENTRY_LIB + r"""
local jp = ARGV[1]
local steps = remove_entry(jp, ARGV[2], jp .. 'groups', ARGV[3], tonumber(ARGV[5]), now_ms())
redis.call('HINCRBY', jp .. 'counters', 'rejected:' .. ARGV[4], 1)
return steps
"""

# ARGV: jp, gbytes, id, reason, grace_ms, dead_cap -> 1 moved, 0 entry already gone
_DEAD_LETTER = LUA_LIB + _ENTRY_LIB + r"""
local jp, stream = ARGV[1], ARGV[1] .. 'groups'
local fields, raw = entry_fields(stream, ARGV[3])
if fields then
  local copy = {'source_id', ARGV[3], 'reason', ARGV[4]}
  for i = 1, #raw, 2 do
    if raw[i] ~= 'source_id' and raw[i] ~= 'reason' and raw[i] ~= 'data' then
      copy[#copy + 1] = raw[i]; copy[#copy + 1] = raw[i + 1]
    end
  end
  if fields['gid'] then
    local data = redis.call('GET', jp .. 'data:' .. fields['gid'])
    if data then copy[#copy + 1] = 'data'; copy[#copy + 1] = data end
  end
  redis.call('XADD', jp .. 'dead', 'MAXLEN', '~', tonumber(ARGV[6]), '*', unpack(copy))
end
remove_entry(jp, ARGV[2], stream, ARGV[3], tonumber(ARGV[5]), now_ms())
redis.call('HINCRBY', jp .. 'counters', 'dead_letter', 1)
if fields then return 1 end
return 0
"""

# ARGV: jp, gbytes, batch_id, consumer, grace_ms, version
# -> {0, acked, lost, steps} | {1, 0, 0, 0} already acked | {-1} unknown | {-2} other consumer | {-3, cur} version
_ACK = LUA_LIB + _ENTRY_LIB + r"""
local jp, gbytes = ARGV[1], ARGV[2]
local bkey = jp .. 'batch:' .. ARGV[3]
local state, consumer, ids = unpack(redis.call('HMGET', bkey, 'state', 'consumer', 'ids'))
if not state then return {-1} end
if consumer ~= ARGV[4] then return {-2} end
if state == 'acked' then return {1, 0, 0, 0} end
local counters = jp .. 'counters'
local version = tonumber(ARGV[6])
if version > 0 then
  local cur = tonumber(redis.call('HGET', counters, 'version') or '0')
  if version < cur then return {-3, cur} end
  redis.call('HSET', counters, 'version', version)
end
local stream, now, grace = jp .. 'groups', now_ms(), tonumber(ARGV[5])
local acked, lost, steps = 0, 0, 0
for _, id in ipairs(split(ids)) do
  -- Only what this consumer still owns: an entry claimed by another consumer
  -- after the idle timeout is that consumer's to ack.
  local p = redis.call('XPENDING', stream, 'trainers', id, id, 1)
  if #p == 1 and p[1][2] == consumer then
    steps = steps + remove_entry(jp, gbytes, stream, id, grace, now)
    acked = acked + 1
  else
    lost = lost + 1
  end
end
redis.call('HINCRBY', counters, 'consumed', acked)
redis.call('HINCRBY', counters, 'steps_consumed', steps)
redis.call('HSET', bkey, 'state', 'acked', 'acked', acked, 'lost', lost)
redis.call('EXPIRE', bkey, 86400)
return {0, acked, lost, steps}
"""

# ARGV: jp, version -> {0, version} | {-1, current}
_SET_VERSION = r"""
local counters = ARGV[1] .. 'counters'
local cur = tonumber(redis.call('HGET', counters, 'version') or '0')
local v = tonumber(ARGV[2])
if v < cur then return {-1, cur} end
redis.call('HSET', counters, 'version', v)
return {0, v}
"""

# ARGV: jp, gateway, groups, ttl_ms
_REPORT_RUNNING = LUA_LIB + r"""
redis.call('HSET', ARGV[1] .. 'running', ARGV[2], ARGV[3] .. ':' .. (now_ms() + tonumber(ARGV[4])))
return 0
"""

# ARGV: jp -> groups running over fresh reports; stale ones are removed
_RUNNING = LUA_LIB + r"""
local key, now, total = ARGV[1] .. 'running', now_ms(), 0
local rows = redis.call('HGETALL', key)
for i = 1, #rows, 2 do
  local n, expires = string.match(rows[i + 1], '^(%d+):(%d+)$')
  if n and tonumber(expires) > now then total = total + tonumber(n) else redis.call('HDEL', key, rows[i]) end
end
return total
"""


# DeleteJob, first step: the job's stream (with its consumer group and pending
# entries), dead letters, counters, settings and running reports, counted and
# deleted at once, and the job taken off the deployment's job set.
# ARGV: jp, jobs, job -> {groups, pending, dead_letters, keys}
_DELETE_HEAD = r"""
local jp, jobs, job = ARGV[1], ARGV[2], ARGV[3]
local stream, dead = jp .. 'groups', jp .. 'dead'
local groups, pending, letters = 0, 0, 0
if redis.call('EXISTS', stream) == 1 then
  groups = redis.call('XLEN', stream)
  local ok, summary = pcall(redis.call, 'XPENDING', stream, 'trainers')
  if ok and type(summary) == 'table' then pending = tonumber(summary[1]) or 0 end
end
if redis.call('EXISTS', dead) == 1 then letters = redis.call('XLEN', dead) end
local keys = redis.call('DEL', stream, dead, jp .. 'counters', jp .. 'config', jp .. 'running')
redis.call('SREM', jobs, job)
return {groups, pending, letters, keys}
"""

# DeleteJob, then: the rest of the job's keys, a SCAN page at a time. A blob's
# bytes come off the global counter in the same step that deletes it, so the
# budget's accounting stays exact whatever else runs meanwhile. A key outside
# ``jp`` is never touched.
# ARGV: jp, gbytes, key... -> {keys, blobs, blob_bytes, blob_refs}
_DELETE_KEYS = r"""
local jp, gbytes = ARGV[1], ARGV[2]
local blob = jp .. 'blob:'
local keys, blobs, nbytes, refs = 0, 0, 0, 0
for i = 3, #ARGV do
  local key = ARGV[i]
  if string.sub(key, 1, #jp) == jp then
    if string.sub(key, 1, #blob) == blob and redis.call('TYPE', key)['ok'] == 'hash' then
      local size, r = unpack(redis.call('HMGET', key, 'size', 'refs'))
      if redis.call('DEL', key) == 1 then
        size = tonumber(size or '0') or 0
        redis.call('DECRBY', gbytes, size)
        blobs = blobs + 1
        nbytes = nbytes + size
        refs = refs + math.max(0, tonumber(r or '0') or 0)
        keys = keys + 1
      end
    else
      keys = keys + redis.call('DEL', key)
    end
  end
end
return {keys, blobs, nbytes, refs}
"""


def glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis MATCH pattern."""
    return "".join("\\" + c if c in "*?[]\\^" else c for c in text)


@dataclasses.dataclass(frozen=True, slots=True)
class DeleteCounts:
    groups: int = 0
    pending: int = 0
    dead_letters: int = 0
    blobs: int = 0
    blob_bytes: int = 0
    blob_refs: int = 0
    keys: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class JobSettings:
    batch_groups: int
    max_staleness: int
    keep_zero_variance: bool
    max_stream_groups: int


@dataclasses.dataclass
class Batch:
    batch_id: str
    groups: list[bytes]  # serialised Group messages, as stored
    steps: int = 0
    rejected: dict[str, int] = dataclasses.field(default_factory=dict)
    zero_variance_kept: int = 0
    reclaimed: int = 0


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class GroupStore:
    def __init__(self, redis: aioredis.Redis, blobs: BlobStore, config: BufferConfig) -> None:
        self.redis = redis
        self.blobs = blobs
        self.config = config
        self.prefix = config.key_prefix
        self._gbytes = blob_bytes_key(self.prefix)
        self._put = redis.register_script(_PUT_GROUP)
        self._reject = redis.register_script(_REJECT)
        self._dead = redis.register_script(_DEAD_LETTER)
        self._ack = redis.register_script(_ACK)
        self._set_version = redis.register_script(_SET_VERSION)
        self._report = redis.register_script(_REPORT_RUNNING)
        self._running = redis.register_script(_RUNNING)
        self._delete_head = redis.register_script(_DELETE_HEAD)
        self._delete_keys = redis.register_script(_DELETE_KEYS)
        self._admission: dict[str, tuple[float, JobSettings, int]] = {}
        # Puts waiting for the next pipeline: (payload key, bytes, script args, caller's future).
        self._put_queue: list[tuple[str, bytes | memoryview, list, asyncio.Future]] = []
        self._put_flusher: asyncio.Task | None = None

    def jp(self, job_id: str) -> str:
        return job_prefix(self.prefix, job_id)

    @property
    def grace_ms(self) -> int:
        return self.config.blob_release_grace_s * 1000

    # --- job settings -----------------------------------------------------

    def derived_cap(self, batch_groups: int, max_staleness: int) -> int:
        return max(64, self.config.stream_cap_factor * (max_staleness + 2) * batch_groups)

    async def admission(self, job_id: str) -> tuple[JobSettings, int]:
        """The job's settings and trainer version, for PutGroup: one round trip,
        cached for a second (versions only grow, and the check allows a lead)."""
        now = time.monotonic()
        cached = self._admission.get(job_id)
        if cached and now - cached[0] < ADMISSION_CACHE_S:
            return cached[1], cached[2]
        jp = self.jp(job_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(jp + "config")
            pipe.hget(jp + "counters", "version")
            raw, version = await pipe.execute()
        if len(self._admission) > 10000:
            self._admission.clear()
        settings = self._settings(raw)
        self._admission[job_id] = (now, settings, int(version or 0))
        return settings, int(version or 0)

    def forget(self, job_id: str) -> None:
        self._admission.pop(job_id, None)

    async def settings(self, job_id: str) -> JobSettings:
        return self._settings(await self.redis.hgetall(self.jp(job_id) + "config"))

    def _settings(self, raw: dict) -> JobSettings:
        b = int(raw.get(b"batch_groups", self.config.batch_groups))
        eta = int(raw.get(b"max_staleness", self.config.max_staleness))
        keep = raw.get(b"keep_zero_variance", b"1" if self.config.keep_zero_variance else b"0") == b"1"
        cap = int(raw.get(b"max_stream_groups", 0)) or self.derived_cap(b, eta)
        return JobSettings(b, eta, keep, cap)

    async def configure(self, job_id: str, batch_groups: int, max_staleness: int, keep: bool, cap: int) -> JobSettings:
        mapping = {
            "batch_groups": batch_groups,
            "max_staleness": max_staleness,
            "keep_zero_variance": int(keep),
            "max_stream_groups": cap,
        }
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.jp(job_id) + "config", mapping=mapping)
            pipe.sadd(jobs_key(self.prefix), job_id)
            await pipe.execute()
        self.forget(job_id)
        return await self.settings(job_id)

    async def trainer_version(self, job_id: str) -> int:
        return int(await self.redis.hget(self.jp(job_id) + "counters", "version") or 0)

    async def set_trainer_version(self, job_id: str, version: int) -> int:
        status, value = await self._set_version(args=[self.jp(job_id), version])
        self.forget(job_id)
        if status < 0:
            raise Conflict(f"version: {version} is older than the trainer version {value}; versions never decrease")
        return int(value)

    async def report_running(self, job_id: str, gateway: str, groups: int, ttl_s: int) -> None:
        await self._report(args=[self.jp(job_id), gateway, groups, ttl_s * 1000])

    async def running(self, job_id: str) -> int:
        return int(await self._running(args=[self.jp(job_id)]))

    # --- put --------------------------------------------------------------

    async def put(
        self, job_id: str, group_id: str, data: bytes | memoryview, summary: GroupSummary, settings: JobSettings
    ) -> tuple[bool, str]:
        """Store one validated group; returns (duplicate, entry id)."""
        jp = self.jp(job_id)
        args = [
            jp, self._gbytes, jobs_key(self.prefix), job_id, group_id,
            summary.min_version, summary.max_version, summary.steps, int(summary.zero_variance),
            " ".join(summary.blobs), settings.max_stream_groups, self.config.dedup_window_s, summary.tokens,
            zlib.crc32(data), len(data),
        ]
        for _ in range(3):
            status, value = await self._put_one(jp + f"data:{group_id}", data, args)
            if status != -3:
                break
        value = _text(value)
        if status == -1:
            raise Exhausted(
                f"stream of job {job_id} holds {value} groups, its cap ({settings.max_stream_groups}); "
                "the staleness gate should have held this group back"
            )
        if status == -2:
            raise InvalidArgument("group.episodes.steps.screenshots", f"blob {value} is not in the store")
        if status == -3:
            raise Unavailable(f"group {group_id}: its payload expired while being stored; retry")
        return status == 1, value

    async def _put_one(self, key: str, data: bytes | memoryview, args: list) -> tuple[int, bytes]:
        """SET NX of the payload and the put script, sent with whatever other puts are
        waiting: one round trip per pipeline instead of two per group (a script
        registered on a redis-py pipeline costs a SCRIPT EXISTS first). Each group is
        still its own script, atomic on its own; only the transport is shared."""
        future = asyncio.get_running_loop().create_future()
        self._put_queue.append((key, data, args, future))
        if self._put_flusher is None or self._put_flusher.done():
            self._put_flusher = asyncio.create_task(self._flush_puts())
        return await future

    async def _flush_puts(self) -> None:
        while self._put_queue:
            take, size = 0, 0
            for _, data, _, _ in self._put_queue:
                if take and (take >= PUT_BATCH_GROUPS or size + len(data) > PUT_BATCH_BYTES):
                    break
                take, size = take + 1, size + len(data)
            items, self._put_queue = self._put_queue[:take], self._put_queue[take:]
            try:
                replies = await self._put_pipeline(items)
            except BaseException as exc:  # noqa: BLE001 - the callers see it (Redis away, cancelled)
                for *_, future in items:
                    if not future.done():
                        future.set_exception(exc if isinstance(exc, Exception) else Unavailable(str(exc) or "cancelled"))
                if not isinstance(exc, Exception):
                    raise
                continue
            for (*_, future), reply in zip(items, replies):
                if future.done():  # the caller went away; its group is stored all the same, or not at all
                    continue
                if isinstance(reply, BaseException):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)

    async def _put_pipeline(self, items: list) -> list:
        """One reply per item: (status, value), or the error Redis gave for it."""
        replies: list = [None] * len(items)
        todo = list(range(len(items)))
        for attempt in range(2):
            async with self.redis.pipeline(transaction=False) as pipe:
                for i in todo:
                    key, data, args, _ = items[i]
                    # NX: a retry of the same group reuses the payload an earlier attempt left.
                    pipe.set(key, data, nx=True, ex=PAYLOAD_TTL_S)
                    pipe.evalsha(self._put.sha, 0, *args)
                raw = await pipe.execute(raise_on_error=False)
            again = []
            for n, i in enumerate(todo):
                stored, reply = raw[2 * n], raw[2 * n + 1]
                if isinstance(stored, Exception):  # e.g. OOM: the payload never went in
                    replies[i] = stored
                elif isinstance(reply, NoScriptError) and attempt == 0:
                    again.append(i)
                elif isinstance(reply, Exception):
                    replies[i] = reply
                else:
                    replies[i] = (reply[0], reply[1])
            if not again:
                break
            # Redis restarted or flushed its scripts: load it once and send those puts again.
            self._put.sha = await self.redis.script_load(_PUT_GROUP)
            todo = again
        return replies

    # --- get --------------------------------------------------------------

    async def _ensure_group(self, stream: str) -> None:
        try:
            await self.redis.xgroup_create(stream, CONSUMER_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def get_batch(
        self, job_id: str, consumer: str, want: int, current_version: int, max_staleness: int, wait_ms: int,
        take_own_pending: bool = False,
    ) -> Batch:
        jp = self.jp(job_id)
        stream = jp + "groups"
        settings = await self.settings(job_id)
        eta = settings.max_staleness if max_staleness < 0 else max_staleness
        await self._ensure_group(stream)
        batch = Batch(uuid.uuid4().hex, [])
        ids: list[str] = []

        if take_own_pending:
            # A restarted consumer's own unacked entries (its last life read them and died): first, oldest
            # first, so the interrupted batch is trained before anything newer and not left to go stale.
            reply = await self.redis.xreadgroup(CONSUMER_GROUP, consumer, {stream: "0"}, count=want)
            own = [(i, f) for i, f in (reply[0][1] if reply else []) if f]
            batch.reclaimed += await self._admit(jp, stream, own, batch, ids, current_version, eta, settings)

        # Entries idle past the claim timeout belong to a consumer that died (or
        # read and never acked): take them over first.
        claim_ms = int(self.config.claim_idle_s * 1000)
        if len(ids) < want:
            _, claimed, _ = await self.redis.xautoclaim(stream, CONSUMER_GROUP, consumer, claim_ms, "0-0",
                                                        count=want - len(ids))
            batch.reclaimed += await self._admit(jp, stream, claimed, batch, ids, current_version, eta, settings)

        deadline = time.monotonic() + wait_ms / 1000
        while len(ids) < want:
            left_ms = int((deadline - time.monotonic()) * 1000)
            # Blocks are short: the client's socket timeout must outlast each one.
            block = min(left_ms, 1000) if left_ms > 0 else None
            reply = await self.redis.xreadgroup(
                CONSUMER_GROUP, consumer, {stream: ">"}, count=want - len(ids), block=block
            )
            entries = reply[0][1] if reply else []
            await self._admit(jp, stream, entries, batch, ids, current_version, eta, settings)
            if not entries and (block is None or time.monotonic() >= deadline):
                break
        if ids:
            await self.redis.hset(
                jp + f"batch:{batch.batch_id}",
                mapping={"consumer": consumer, "ids": " ".join(ids), "state": "open", "created": int(time.time())},
            )
            await self.redis.expire(jp + f"batch:{batch.batch_id}", BATCH_TTL_S)
        else:
            batch.batch_id = ""
        return batch

    async def _admit(self, jp, stream, entries, batch: Batch, ids, current_version, eta, settings) -> int:
        if not entries:
            return 0
        keys = [jp + "data:" + fields.get(b"gid", b"").decode(errors="replace") for _, fields in entries]
        payloads = await self.redis.mget(keys)
        admitted = 0
        for (raw_id, fields), data in zip(entries, payloads):
            entry_id = _text(raw_id)
            fields[b"data"] = data
            problem = _entry_problem(fields)
            if problem:
                await self._maybe_dead_letter(jp, stream, entry_id, problem)
                continue
            if current_version - int(fields[b"minv"]) > eta:
                await self._reject(args=[jp, self._gbytes, entry_id, "stale", self.grace_ms])
                batch.rejected["stale"] = batch.rejected.get("stale", 0) + 1
                continue
            if fields[b"zv"] == b"1":
                if not settings.keep_zero_variance:
                    await self._reject(args=[jp, self._gbytes, entry_id, "zero_variance", self.grace_ms])
                    batch.rejected["zero_variance"] = batch.rejected.get("zero_variance", 0) + 1
                    continue
                batch.zero_variance_kept += 1
                await self.redis.hincrby(jp + "counters", "zero_variance_kept", 1)
            ids.append(entry_id)
            batch.groups.append(fields[b"data"])
            batch.steps += int(fields[b"steps"])
            admitted += 1
        return admitted

    async def _maybe_dead_letter(self, jp: str, stream: str, entry_id: str, problem: str) -> None:
        pending = await self.redis.xpending_range(stream, CONSUMER_GROUP, entry_id, entry_id, 1)
        deliveries = pending[0]["times_delivered"] if pending else self.config.max_deliveries
        log.warning("invalid stream entry %s (delivery %d): %s", entry_id, deliveries, problem)
        if deliveries >= self.config.max_deliveries:
            await self._dead(args=[jp, self._gbytes, entry_id, problem[:200], self.grace_ms, self.config.dead_letter_cap])
            log.error("entry %s dead-lettered after %d deliveries: %s", entry_id, deliveries, problem)

    # --- ack --------------------------------------------------------------

    async def ack(self, job_id: str, batch_id: str, consumer: str, version: int) -> tuple[int, int, bool]:
        """Returns (acked, lost to another consumer, already acked)."""
        reply = await self._ack(args=[self.jp(job_id), self._gbytes, batch_id, consumer, self.grace_ms, version])
        if version:
            self.forget(job_id)
        status = reply[0]
        if status == -1:
            raise NotFound(f"batch_id: no batch {batch_id!r} for job {job_id} (expired or never issued)")
        if status == -2:
            raise InvalidArgument("consumer", f"batch {batch_id} was issued to another consumer")
        if status == -3:
            raise Conflict(f"trainer_version: {version} is older than the trainer version {reply[1]}")
        return int(reply[1]), int(reply[2]), status == 1

    # --- delete -----------------------------------------------------------

    async def delete_job(self, job_id: str, page: int = 500) -> DeleteCounts:
        """Delete every key of the job (everything under ``J``, see common.keys); returns what went.

        ``J`` ends in ``:`` and job ids have none, so ``MATCH J*`` (its prefix escaped) matches this job's
        keys only, never those of a job whose id merely starts with this one (``abc`` vs ``abc-warm``); each
        key is checked again against ``J`` before it is deleted. Idempotent: a second call deletes nothing."""
        jp = self.jp(job_id)
        self.forget(job_id)
        groups, pending, letters, keys = (int(x) for x in await self._delete_head(
            args=[jp, jobs_key(self.prefix), job_id]))
        blobs = nbytes = refs = 0
        pattern = glob_escape(jp) + "*"
        cursor = 0
        while True:
            cursor, found = await self.redis.scan(cursor, match=pattern, count=page)
            names = [k for k in (_text(k) for k in found) if k.startswith(jp)]
            for i in range(0, len(names), page):
                k, b, n, r = (int(x) for x in await self._delete_keys(
                    args=[jp, self._gbytes, *names[i:i + page]]))
                keys, blobs, nbytes, refs = keys + k, blobs + b, nbytes + n, refs + r
            if cursor == 0:
                break
        # A sweep that ran meanwhile may have re-created the blob statistics (HINCRBY); all blobs are gone now.
        keys += int(await self.redis.delete(jp + "blobs:stat", jp + "blobs:unref"))
        self.forget(job_id)
        counts = DeleteCounts(groups, pending, letters, blobs, nbytes, refs, keys)
        if keys:
            log.info("job %s deleted: %s", job_id, counts)
        return counts

    # --- stats ------------------------------------------------------------

    async def stats(self, job_id: str) -> buffer_pb2.BufferStatsResponse:
        jp = self.jp(job_id)
        stream = jp + "groups"
        settings = await self.settings(job_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(jp + "counters")
            pipe.xlen(stream)
            pipe.xrange(stream, "-", "+", count=1)
            pipe.xlen(jp + "dead")
            pipe.time()
            counters, length, oldest, dead, (sec, usec) = await pipe.execute()
        try:
            pending = (await self.redis.xpending(stream, CONSUMER_GROUP))["pending"]
        except ResponseError:  # no stream or group yet
            pending = 0
        running = await self.running(job_id)
        count, nbytes = await self.blobs.usage(job_id)
        c = {_text(k): int(v) for k, v in counters.items()}
        age = 0.0
        if oldest:
            age = max(0.0, (sec * 1000 + usec / 1000 - int(_text(oldest[0][0]).split("-")[0])) / 1000)
        rejected = [
            buffer_pb2.RejectionCount(reason=k.split(":", 1)[1], groups=v)
            for k, v in sorted(c.items()) if k.startswith("rejected:")
        ]
        version = c.get("version", 0)
        accepted = c.get("accepted", 0)
        # Rejected groups were never trained: they must not hold the gate shut.
        trainable = accepted - sum(r.groups for r in rejected) - c.get("dead_letter", 0)
        gate = (settings.max_staleness + version + 1) * settings.batch_groups - (trainable + running)
        return buffer_pb2.BufferStatsResponse(
            job_id=job_id,
            trainer_version=version,
            groups_accepted=accepted,
            groups_running=running,
            groups_consumed=c.get("consumed", 0),
            rejected=rejected,
            groups_duplicate=c.get("duplicate", 0),
            zero_variance_kept=c.get("zero_variance_kept", 0),
            steps_accepted=c.get("steps_accepted", 0),
            steps_consumed=c.get("steps_consumed", 0),
            stream_length=length,
            stream_pending=pending,
            oldest_entry_age_s=age,
            dead_letters=dead,
            blob_count=count,
            blob_bytes=nbytes,
            blob_budget_bytes=await self.blobs.budget(),
            blob_bytes_all_jobs=await self.blobs.total_bytes(),
            batch_groups=settings.batch_groups,
            max_staleness=settings.max_staleness,
            keep_zero_variance=settings.keep_zero_variance,
            max_stream_groups=settings.max_stream_groups,
            gate_capacity=gate,
            group_bytes=c.get("group_bytes", 0),
        )


_REQUIRED = (b"gid", b"data", b"minv", b"steps", b"zv", b"blobs", b"crc")


def _entry_problem(fields: dict) -> str:
    """Why a stream entry cannot be handed to a trainer; '' when it can.

    A CRC of the group's bytes, taken when it was validated and stored, stands in
    for parsing it again here: ~30x cheaper on a 500 KB group, and it also
    catches damage that would still parse."""
    missing = [f.decode() for f in _REQUIRED if fields.get(f) is None]
    if missing:
        return f"missing fields {missing}"
    try:
        int(fields[b"minv"]), int(fields[b"steps"])
        crc = int(fields[b"crc"])
    except ValueError as exc:
        return f"undecodable fields: {exc}"[:200]
    if zlib.crc32(fields[b"data"]) != crc:
        return "checksum mismatch: the stored group is damaged"
    return ""
