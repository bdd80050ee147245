"""What the benchmark watches: the ledger's answers, the services' metrics, and each process's CPU
and memory. Read-only: nothing here changes the system under test."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.security import DEV_METRICS_TOKEN
from devtools.stack import Stack
from shared.topics import FEEDBACK_RECEIVED, LEDGER_POSTED, LEDGER_TRANSFER_REQUESTS

# transfer-id prefixes payments derives from the payment id (services/payments/domain.py)
HOLD, PAY, RELEASE, DIVERT = 0, 1, 2, 3
PREFIXES = {b"hold": HOLD, b"pay": PAY, b"release": RELEASE, b"divert": DIVERT}
SEEN, REJECTED = 1, 2

SCRAPE = {"Authorization": f"Bearer {DEV_METRICS_TOKEN}"}  # the local stack's development scrape token


class Tracker:
    """Consumes ``ledger.posted.v1`` (keyed by transfer id), ``ledger.transfer-requests.v1``
    (keyed by payment id) and ``feedback.received.v1`` (keyed by episode id) from the end, and
    records per episode index when payments asked the ledger for its transfers, when each transfer
    was answered (record timestamps: each service's outbox relay publishes right after its commit)
    and when its feedback left the feedback service. Keys are parsed, values only searched for a
    rejection, so following millions of events costs little CPU."""

    def __init__(self, bootstrap: str, run: str, capacity: int) -> None:
        self.bootstrap = bootstrap
        self.pay_prefix = f"{run}-p".encode()
        self.ep_prefix = f"{run}-e".encode()
        self.hold_ms = array("d", bytes(8 * capacity))  # wall ms when hold:<pid> was answered, 0 = not yet
        self.fb_ms = array("d", bytes(8 * capacity))  # wall ms when the episode's feedback.received.v1 appeared
        self.req_ms = array("d", bytes(8 * capacity))  # wall ms when payments published its first transfer request
        self.state = [bytearray(capacity) for _ in PREFIXES]  # per prefix: 0 none, 1 answered, 2 rejected
        self.counts = [0] * len(PREFIXES)  # distinct answered transfers per prefix
        self.rejected = [0] * len(PREFIXES)
        self.feedback_seen = 0
        self.foreign = 0  # answers for transfers this run did not cause
        self.rejections: list[str] = []  # a few examples, for the report
        self.records = 0
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
                                    fetch_max_wait_ms=20, max_partition_fetch_bytes=4 * 1024 * 1024,
                                    fetch_max_bytes=32 * 1024 * 1024, client_id="bench-e2e-tracker")
        await consumer.start()
        tps = []
        for topic in (LEDGER_POSTED.name, FEEDBACK_RECEIVED.name, LEDGER_TRANSFER_REQUESTS.name):
            parts = consumer.partitions_for_topic(topic)
            if not parts:
                await consumer._client.force_metadata_update()  # noqa: SLF001 - no public call for this
                parts = consumer.partitions_for_topic(topic)
            if not parts:
                raise RuntimeError(f"topic {topic} does not exist: did the services start?")
            tps += [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:  # resolve the end offsets now, before anything is submitted
            await consumer.position(tp)
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(), name="bench-tracker")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._consumer:
            with contextlib.suppress(Exception):
                await self._consumer.stop()

    def _index(self, rest: bytes, prefix: bytes) -> int | None:
        if not rest.startswith(prefix):
            return None
        try:
            i = int(rest[len(prefix):])
        except ValueError:
            return None
        return i if 0 <= i < len(self.hold_ms) else None

    async def _run(self) -> None:
        assert self._consumer is not None
        posted_topic, requests_topic = LEDGER_POSTED.name, LEDGER_TRANSFER_REQUESTS.name
        req_ms = self.req_ms
        while True:
            batches = await self._consumer.getmany(timeout_ms=200, max_records=50_000)
            for tp, records in batches.items():
                self.records += len(records)
                if tp.topic == posted_topic:
                    for r in records:
                        self._posted(r.key or b"", r.value or b"", r.timestamp)
                elif tp.topic == requests_topic:
                    for r in records:
                        i = self._index(r.key or b"", self.pay_prefix)
                        if i is not None and not req_ms[i]:
                            req_ms[i] = float(r.timestamp)
                else:
                    for r in records:
                        i = self._index(r.key or b"", self.ep_prefix)
                        if i is not None and not self.fb_ms[i]:
                            self.fb_ms[i] = float(r.timestamp)
                            self.feedback_seen += 1

    def _posted(self, key: bytes, value: bytes, ts: int) -> None:
        prefix, _, rest = key.partition(b":")
        kind = PREFIXES.get(prefix)
        i = self._index(rest, self.pay_prefix) if kind is not None else None
        if i is None:
            self.foreign += 1
            return
        state = self.state[kind]
        if state[i]:
            return  # an answer repeated (a redelivered request): counted once
        if b'"status":"rejected"' in value:
            state[i] = REJECTED
            self.rejected[kind] += 1
            if len(self.rejections) < 5:
                self.rejections.append(f"{key.decode(errors='replace')}: {value[:300].decode(errors='replace')}")
        else:
            state[i] = SEEN
        self.counts[kind] += 1
        if kind == HOLD:
            self.hold_ms[i] = float(ts)

    def holds_in(self, lo: int, hi: int) -> int:
        """Answered holds among episode indexes [lo, hi)."""
        return (hi - lo) - self.state[HOLD][lo:hi].count(0)

    def missing(self, kind: int, lo: int, hi: int) -> int:
        return self.state[kind][lo:hi].count(0)

    def rejected_in(self, kind: int, lo: int, hi: int) -> int:
        return self.state[kind][lo:hi].count(REJECTED)


def pct(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


# ---------------------------------------------------------------------------------------------
# Metrics (consumer lag, outbox backlog) from each service's /metrics
# ---------------------------------------------------------------------------------------------
_LAG = re.compile(r'^kafka_consumer_lag_records\{([^}]*)\}\s+([0-9.eE+\-]+)$')
_LABEL = re.compile(r'(\w+)="([^"]*)"')
_BACKLOG = re.compile(r'^outbox_backlog\s+([0-9.eE+\-]+)$')
SHORT_TOPIC = {
    "payments.requested.v1": "pay.req",
    "feedback.received.v1": "fb.recv",
    "ledger.posted.v1": "ldg.posted",
    "ledger.transfer-requests.v1": "ldg.req",
    "feedback.submitted.v1": "fb.sub",
}


async def lags(http: httpx.AsyncClient, stack: Stack) -> dict[str, float]:
    """``{"<service> <topic>": records behind}`` summed over partitions, plus ``"<service> outbox"``.
    The services refresh the lag gauge every 5 s."""
    out: dict[str, float] = {}
    for name, svc in stack.services.items():
        try:
            text = (await http.get(svc.url + "/metrics", timeout=5, headers=SCRAPE)).text
        except httpx.HTTPError:
            continue
        for line in text.splitlines():
            m = _LAG.match(line)
            if m:
                labels = dict(_LABEL.findall(m.group(1)))
                topic = SHORT_TOPIC.get(labels.get("topic", ""), labels.get("topic", "?"))
                key = f"{name} {topic}"
                out[key] = out.get(key, 0.0) + float(m.group(2))
                continue
            m = _BACKLOG.match(line)
            if m:
                out[f"{name} outbox"] = float(m.group(1))
    return out


BATCH_HISTOGRAMS = {  # service: (records per batch, seconds per batch) histograms, where it has them
    "ledger": ("ledger_batch_size", "ledger_batch_seconds"),
    "payments": ("payments_consumer_batch_size", "payments_consumer_batch_seconds"),
}


async def batch_stats(http: httpx.AsyncClient, stack: Stack) -> dict[str, tuple[float, float, float]]:
    """Per service, cumulative (batches, records, seconds) of its consumer batches, from the
    histograms' _count and _sum (all label sets added up); services without them are left out."""
    out: dict[str, tuple[float, float, float]] = {}
    for name, (size, secs) in BATCH_HISTOGRAMS.items():
        svc = stack.services.get(name)
        if svc is None:
            continue
        try:
            text = (await http.get(svc.url + "/metrics", timeout=5, headers=SCRAPE)).text
        except httpx.HTTPError:
            continue
        sums = {f"{size}_count": 0.0, f"{size}_sum": 0.0, f"{secs}_sum": 0.0}
        found = False
        for line in text.splitlines():
            metric = line.split("{", 1)[0].split(" ", 1)[0]
            if metric in sums:
                sums[metric] += float(line.rsplit(" ", 1)[1])
                found = True
        if found:
            out[name] = (sums[f"{size}_count"], sums[f"{size}_sum"], sums[f"{secs}_sum"])
    return out


def fmt_batches(before: dict[str, tuple[float, float, float]], after: dict[str, tuple[float, float, float]]) -> str:
    parts = []
    for name, (n1, r1, s1) in after.items():
        n0, r0, s0 = before.get(name, (0.0, 0.0, 0.0))
        n, r, sec = n1 - n0, r1 - r0, s1 - s0
        if n > 0:
            parts.append(f"{name} {n:,.0f} batches, mean {r / n:,.0f} records, {1000 * sec / n:,.1f} ms each, {sec:,.1f} s in all")
    return "; ".join(parts) or "no batch metrics"


# ---------------------------------------------------------------------------------------------
# Processes: CPU time and peak memory from /proc (Linux)
# ---------------------------------------------------------------------------------------------
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> tuple[int, float, float] | None:
    """(ppid, own cpu seconds, reaped children's cpu seconds) of a process, None if gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2:].split()
    # fields[0] is state (field 3); ppid is field 4; utime, stime, cutime, cstime are fields 14-17
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK, (int(fields[13]) + int(fields[14])) / _TICK


def status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Processes:
    """The processes of the system under test, grouped: each service, the broker, PostgreSQL (its
    postmaster and every backend), and this benchmark process."""

    groups: dict[str, list[int]] = field(default_factory=dict)
    postmaster: int | None = None

    @classmethod
    def of(cls, stack: Stack) -> "Processes":
        groups: dict[str, list[int]] = {}
        for name, svc in stack.services.items():
            if svc.proc is not None:
                groups[name] = [svc.proc.pid]
        infra = stack.infra
        if infra is not None and infra.kafka is not None and infra.kafka.proc is not None:
            groups["broker"] = [infra.kafka.proc.pid]
        postmaster = None
        if infra is not None and infra.postgres is not None:
            with contextlib.suppress(OSError, ValueError, IndexError):
                postmaster = int((infra.postgres.data_dir / "postmaster.pid").read_text().split()[0])
        if postmaster:
            groups["postgres"] = [postmaster]
        groups["bench"] = [os.getpid()]
        return cls(groups, postmaster)

    def cpu_seconds(self) -> dict[str, float]:
        """Cumulative CPU seconds per group (PostgreSQL: postmaster + live backends + reaped ones)."""
        out: dict[str, float] = {}
        for name, pids in self.groups.items():
            if name == "postgres" and self.postmaster:
                st = _stat(self.postmaster)
                total = (st[1] + st[2]) if st else 0.0
                for entry in os.scandir("/proc"):
                    if entry.name.isdigit():
                        child = _stat(int(entry.name))
                        if child and child[0] == self.postmaster:
                            total += child[1]
                out[name] = total
            else:
                total = 0.0
                for pid in pids:
                    st = _stat(pid)
                    if st:
                        total += st[1]
                out[name] = total
        return out

    def peak_rss_mb(self) -> dict[str, float]:
        """VmHWM (peak resident set) of each service process, MB."""
        return {name: status_kb(pids[0], "VmHWM") / 1024 for name, pids in self.groups.items()
                if name not in ("postgres",)}


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (/proc/stat: user, nice, system, irq,
    softirq, steal)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICK


class CpuWindow:
    """CPU use per group between two moments, as % of one core; ``other`` is the rest of the
    machine (other users' processes share these cores)."""

    def __init__(self, procs: Processes) -> None:
        self.procs = procs
        self.t = time.monotonic()
        self.cpu = procs.cpu_seconds()
        self.machine = machine_busy_seconds()

    def take(self) -> dict[str, float]:
        now, cpu, machine = time.monotonic(), self.procs.cpu_seconds(), machine_busy_seconds()
        dt = max(now - self.t, 1e-6)
        out = {k: 100 * (cpu.get(k, 0.0) - self.cpu.get(k, 0.0)) / dt for k in cpu}
        if machine:
            out["other"] = max(0.0, 100 * (machine - self.machine) / dt - sum(out.values()))
        self.t, self.cpu, self.machine = now, cpu, machine
        return out


def fmt_cpu(cpu: dict[str, float]) -> str:
    order = ["payments", "ledger", "feedback", "postgres", "broker", "bench", "other"]
    keys = [k for k in order if k in cpu] + sorted(k for k in cpu if k not in order)
    cores = os.cpu_count() or 1
    return " ".join(f"{k} {cpu[k]:.0f}" for k in keys) + f" (of {cores * 100})"


def fmt_cpu_per_episode(cpu: dict[str, float], seconds: float, episodes: int, *, target_per_s: int) -> str:
    """CPU time per episode by process, and the cores a target rate would need at that cost.

    Unlike a rate, CPU time per episode barely moves when the machine is busy with other work,
    so it is the figure to compare between runs and to size a deployment with.
    """
    if episodes <= 0 or seconds <= 0:
        return "CPU per episode: n/a"
    # The system only: the load generator ("bench") and the rest of the machine ("other") are not part of it.
    ms = {k: v / 100 * seconds / episodes * 1000 for k, v in cpu.items() if k not in ("bench", "other")}
    total = sum(ms.values())
    parts = " ".join(f"{k} {ms[k]:.3f}" for k in sorted(ms, key=lambda k: -ms[k]))
    return (f"CPU per episode (ms, services + PostgreSQL + broker): {parts}; total {total:.3f} ms, so"
            f" {target_per_s:,} episodes/s would need {total * target_per_s / 1000:.1f} cores at this cost")
