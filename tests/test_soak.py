"""Soak: mixed load on each backend while servers and workers are SIGKILLed and restarted.

For about 50 seconds per backend, threads send batches (v1 and v2, keyed by pcId and by
thirdPartyId, each with a header of its own, some with rows that must fail), single
updates, page calls, fetches and status polls over loopback HTTP. Twice a
process is killed with SIGKILL and started again: on SQLite the one ``profilebase serve``
with its HTTP and worker processes; on PostgreSQL ``profilebase worker`` processes (while they hold a
lease) and one of two API-only servers (``serve --workers 0``).

The load never guesses. A batch carries an ``Idempotency-Key`` and is sent again, with the
same key, until a reply says it was accepted, so every batch ends with a known id and
place in the acceptance order. A single update or page call whose reply was lost is
*unknown*; each writes a value of its own, so the stored value tells which write won.

Afterwards: every accepted batch is complete with
``batchSize = consumedCount = successfulUpdates + profilesNotFound + failedUpdates`` and
the counts of a one-by-one model; the exported profiles equal that model (batches applied
in acceptance order, the last known or unknown single update and page call on top); no
5xx reply and no dropped connection happened outside a restart; and the memory (VmRSS)
and open file descriptors of the processes that were not killed are back near where they
were after warming up. The figures are printed.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from helpers import batch_id_of, xml_fields
from test_crash import ServerProcess, wait_until
from test_many_nodes import NODE_SETTINGS, WorkerProcess, kill_holding_a_lease
from test_ordering import NAMES, model, random_batches

from profilebase import batchfile

pytestmark = pytest.mark.slow

#: Seconds of load, and the moments (seconds into the load) at which processes are killed.
#: A restarted `serve` answers 9-14 s after its kill on a busy 2-core machine, and must then
#: run WARM_UP seconds under load to be measured: the last kill leaves 23 s for both.
LOAD_SECONDS = 50.0
KILLS_AT = (12.0, 27.0)
#: A process's "starting level" of memory and descriptors is measured this long after it
#: starts, under load, so that caches and pools filled by ordinary use count as the start.
WARM_UP = 6.0
#: A restart window runs from the kill until the new process answers, plus this grace.
GRACE = 2.0
#: Pause of each load thread between two requests: enough load to matter on a shared
#: 2-core machine without starving the processes under test.
PAUSE = 0.05
#: Batches each batch thread may have sent and not yet seen complete.
OUTSTANDING = 4

#: Ids that exist before the faults begin (single updates target them), and the id space of
#: batches: ids beyond the seeded ones are created by v2 rows as the load goes on.
SEEDED = 8
IDS = 24
#: tntIds page calls use; no batch names them.
VISITORS = [f"v{n}.0_0" for n in range(12)]
#: Lines that fail whatever the batch (they are never valid rows).
BAD_LINES = {
    "pcId": ["id1,%zz", "id2," + "x," * 1100, ",x", "id3,%C3%28", "1.2.3,x"],
    "thirdPartyId": ["id1,%zz", "id2," + "x," * 1100, ",x", "id3,%C3%28", "id%2B4,x"],
}
#: How often each shape of body is sent (see ``Load.batch_body``).
SHAPES = {"plain": 88, "crlf": 3, "cr": 3, "wide": 3, "nul": 3}
#: Reply text that would leak internals (class names, drivers, SQL, tracebacks).
INTERNALS = re.compile(r"Traceback|psycopg|duckdb|sqlite3|[A-Za-z]+(Error|Exception)\(")


def usage(pid: int) -> tuple[int, int]:
    """(VmRSS in kB, open file descriptors) of a live process."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1))  # type: ignore[union-attr]
    return rss, len(list(Path(f"/proc/{pid}/fd").iterdir()))


# -- the processes under test ------------------------------------------------------------------


class Node:
    """One named process under test that can be killed and started again on the same port."""

    def __init__(self, name: str, start: Callable[[], ServerProcess | WorkerProcess]) -> None:
        self.name = name
        self.start = start
        self.process = start()
        self.started = time.monotonic()
        self.kills = 0
        self.baseline: tuple[int, int] | None = None

    @property
    def pid(self) -> int:
        return self.process.process.pid

    @property
    def url(self) -> str | None:
        return self.process.url if isinstance(self.process, ServerProcess) else None

    def restart(self, kill: Callable[[], object]) -> None:
        kill()
        self.kills += 1
        self.baseline = None
        self.process = self.start()
        self.started = time.monotonic()


class Cluster:
    """The processes of one backend, the schedule of kills and the restart windows."""

    def __init__(self, database: str, log: Path, backend: str) -> None:
        self.database = database
        self.log = log
        self.backend = backend
        self.windows: list[tuple[float, float]] = []
        self.nodes: list[Node] = []
        ports: dict[str, int] = {}

        def server(name: str, **settings: str) -> Callable[[], ServerProcess]:
            def start() -> ServerProcess:
                process = ServerProcess(database, log, port=ports.get(name, 0), **settings)
                ports[name] = process.port
                return process

            return start

        try:
            if backend == "sqlite":
                # One process: the API and two worker threads, killed together.
                self.nodes.append(Node("serve", server("serve", **NODE_SETTINGS, workers="2")))
                self.schedule = [["serve"], ["serve"]]
            else:
                for name in ("api-a", "api-b"):
                    self.nodes.append(Node(name, server(name, **NODE_SETTINGS, workers="0")))
                for name in ("worker-1", "worker-2"):
                    self.nodes.append(Node(name, lambda: WorkerProcess(database, log)))
                self.schedule = [["worker-1"], ["api-a", "worker-1"]]
        except BaseException:
            self.stop()
            raise

    def node(self, name: str) -> Node:
        return next(node for node in self.nodes if node.name == name)

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes if node.url]

    def kill(self, names: list[str]) -> None:
        """SIGKILL the named processes (a worker while it holds a lease) and start them again."""
        began = time.monotonic()
        for name in names:
            node = self.node(name)
            process = node.process
            if isinstance(process, WorkerProcess):
                node.restart(lambda p=process: self.kill_worker(p))
            else:
                node.restart(process.kill)
        self.windows.append((began, time.monotonic() + GRACE))

    def kill_worker(self, worker: WorkerProcess) -> None:
        """Kill a worker while it holds a lease, or as it is if it holds none for 30 s (when
        the load is stalled, say)."""
        try:
            kill_holding_a_lease(worker, self.database)
        except AssertionError:
            worker.kill()

    def in_window(self, moment: float) -> bool:
        return any(start <= moment <= end for start, end in self.windows)

    def measure_warm(self, now: float) -> None:
        for node in self.nodes:
            if node.baseline is None and now - node.started >= WARM_UP:
                node.baseline = usage(node.pid)

    def stop(self) -> None:
        for node in self.nodes:
            node.process.kill()


@pytest.fixture
def cluster(database_url: str, tmp_path: Path) -> Iterator[Cluster]:
    backend = "sqlite" if database_url.startswith("sqlite") else "postgres"
    the_cluster = Cluster(database_url, tmp_path / "soak.log", backend)
    try:
        yield the_cluster
    finally:
        the_cluster.stop()


# -- the load ----------------------------------------------------------------------------------


@dataclass
class Accepted:
    """One accepted batch: its place in the acceptance order and what the model needs."""

    seq: int
    batch_id: str
    kind: str
    v2: bool
    rows: list[list[str]]
    bad: int


@dataclass
class Writes:
    """Immediate writes of one attribute to one profile, by one thread, in order: the values
    the stored attribute may hold at the end (None: absent)."""

    allowed: set[str | None] = field(default_factory=lambda: {None})

    def confirmed(self, value: str) -> None:
        self.allowed = {value}

    def unknown(self, value: str) -> None:
        self.allowed.add(value)


class Load:
    """The load generators, what they saw, and what they know was written."""

    def __init__(self, cluster: Cluster, seed: int) -> None:
        self.cluster = cluster
        self.rnd = random.Random(seed)
        self.stop = threading.Event()
        self.accepted: list[Accepted] = []
        self.updates: dict[tuple[str, str], Writes] = {}  # (kind, id) -> writes of `s`
        self.visits: dict[str, Writes] = {}  # tntId -> writes of `p`
        self.lost_visitors: set[str] = set()  # `p` of new visitors whose reply was lost
        self.replies: list[tuple[float, int, str]] = []  # (when, status, path)
        self.dropped: list[tuple[float, str, str]] = []  # (when, error, path)
        self.problems: list[str] = []
        self.shapes: set[str] = set()  # the problems seen, numbers left out
        self.counts = dict.fromkeys(
            ["batches", "refused", "updates", "visits", "fetches", "polls"], 0
        )
        self.seen: dict[str, int] = {}  # batch id -> highest consumedCount seen
        self.complete: dict[str, dict[str, str]] = {}  # batch id -> its final counts
        self.local = threading.local()  # each thread's HTTP clients, one per server

    def call(self, method: str, path: str, **kwargs: object) -> httpx.Response | None:
        """One request, to any server; None when no reply came (refused, reset, timed out)."""
        urls = self.cluster.urls
        base = urls[self.rnd.randrange(len(urls))]
        clients = self.local.__dict__.setdefault("clients", {})
        if base not in clients:
            clients[base] = httpx.Client(base_url=base, timeout=30)
        try:
            response = clients[base].request(method, path, **kwargs)
        except httpx.TransportError as exc:
            self.dropped.append((time.monotonic(), type(exc).__name__, path))
            clients.pop(base).close()  # its connections may be to a process that died
            return None
        self.replies.append((time.monotonic(), response.status_code, path))
        leak = INTERNALS.search(response.text)
        if leak:
            shown = response.text[max(0, leak.start() - 100) : leak.end() + 100]
            route = re.sub(r"demo-\d+-\d+", "{batchId}", path.split("?")[0])
            self.note(f"a reply to {method} {route} shows internals: …{shown}…")
        return response

    def note(self, problem: str) -> None:
        """Keep a problem found, once however often it is seen (numbers aside)."""
        shape = re.sub(r"\d+", "#", problem)
        if shape not in self.shapes:
            self.shapes.add(shape)
            self.problems.append(problem)

    def run(self, target: Callable[..., None], *args: object) -> None:
        """Run one load generator in this thread; what it raises is a problem found."""
        try:
            target(*args)
        except Exception as exc:
            self.note(f"{target.__name__} stopped: {exc!r}")
        finally:
            self.close()

    def close(self) -> None:
        for client in self.local.__dict__.pop("clients", {}).values():
            client.close()

    # -- batches -------------------------------------------------------------------------------

    def batch_body(
        self, kind: str, rows: list[list[str]], shape: str
    ) -> tuple[bytes, list[list[str]], int]:
        """The body of a batch of ``shape``, the rows the model applies, the failing lines.

        Every batch has a header of its own (an extra, empty column) and some have lines
        that fail. ``shape`` adds what issue 9 says every accepted batch must survive:
        ``crlf`` and ``cr`` line ends, a ``wide`` header (1,000 more columns, all empty),
        a ``nul`` (U+0000) in a row's id, which the id rule refuses (the row fails, on every
        backend).
        """
        extra = 1000 if shape == "wide" else 1
        names = [*NAMES, *(f"h{uuid.uuid4().hex[:10]}" for _ in range(extra))]
        rows = list(rows)
        bad = [
            line.encode()
            for line in self.rnd.sample(BAD_LINES[kind], self.rnd.choice([0, 0, 0, 1, 2]))
        ]
        if shape == "nul":
            row = [f"id{self.rnd.randrange(IDS)}\x00", "nul"]
            bad.append(batchfile.encode_row(row).encode())
        lines = batchfile.encode(kind, names, rows).split(b"\n")[:-1]
        for line in bad:
            lines.insert(self.rnd.randint(1, len(lines)), line)
        end = {"crlf": b"\r\n", "cr": b"\r"}.get(shape, b"\n")
        return end.join(lines) + end, rows, len(bad)

    def send_batch(self, kind: str, v2: bool, rows: list[list[str]], shape: str) -> str | None:
        """Send until accepted, with one Idempotency-Key: exactly one batch, whatever is lost.

        Its id, or None for a lone-CR body refused with a 400 (the other answer issue 9 allows).
        """
        body, rows, bad = self.batch_body(kind, rows, shape)
        headers = {"Idempotency-Key": f"soak-{uuid.uuid4()}"}
        path = "/m2/demo/v2/profile/batchUpdate" if v2 else "/m2/demo/profile/batchUpdate"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            response = self.call("POST", path, content=body, headers=headers)
            if response is not None and response.status_code == 200:
                batch_id = batch_id_of(response)
                seq = int(batch_id.rsplit("-", 1)[1])
                self.accepted.append(Accepted(seq, batch_id, kind, v2, rows, bad))
                self.counts["batches"] += 1
                return batch_id
            if response is not None and response.status_code == 400 and shape == "cr":
                message = xml_fields(response)["message"]
                if not re.search(r"\bCR\b|carriage return|line end", message, re.I):
                    self.note(f"a lone-CR body was refused for another reason: {message}")
                self.counts["refused"] += 1
                return None
            if response is not None and response.status_code < 500:
                raise AssertionError(f"batch refused: {response.status_code} {response.text}")
            time.sleep(0.1)
        raise AssertionError("a batch was not accepted within 120 s")

    def batches(self, kinds: list[str], seed: int) -> None:
        """Send batches, keeping at most ``OUTSTANDING`` of them not yet seen complete, so the
        load follows the speed of the machine and the backlog stays small."""
        rnd = random.Random(seed)
        outstanding: list[str] = []
        while not self.stop.is_set():
            ((v2, rows),) = random_batches(rnd, 1, most_rows=30, ids=IDS)
            shape = rnd.choices(list(SHAPES), weights=list(SHAPES.values()))[0]
            batch_id = self.send_batch(rnd.choice(kinds), v2, rows, shape)
            if batch_id is not None:
                outstanding.append(batch_id)
            while len(outstanding) > OUTSTANDING and not self.stop.is_set():
                self.poll(outstanding[0], json_status=rnd.random() < 0.3)
                if outstanding[0] in self.complete:
                    outstanding.pop(0)
                else:
                    time.sleep(PAUSE)
            time.sleep(PAUSE)

    # -- single updates and page calls ---------------------------------------------------------

    def single_updates(self) -> None:
        """Set `s` (no batch writes it) on the seeded profiles, one value per call."""
        targets = [(kind, f"id{n}") for kind in ("pcId", "thirdPartyId") for n in range(SEEDED)]
        number = 0
        while not self.stop.is_set():
            kind, identifier = targets[number % len(targets)]
            value = f"u{number}"
            number += 1
            writes = self.updates.setdefault((kind, identifier), Writes())
            id_param = "mboxPC" if kind == "pcId" else "mbox3rdPartyId"
            response = self.call(
                "POST", "/m2/demo/profile/update", data={id_param: identifier, "profile.s": value}
            )
            self.counts["updates"] += 1
            if response is None or response.status_code >= 500:
                writes.unknown(value)
            elif response.status_code == 200:
                writes.confirmed(value)
            else:
                self.note(f"update {identifier}: {response.status_code} {response.text}")
            time.sleep(PAUSE)

    def page_calls(self) -> None:
        """Set `p` through page calls: known visitors by tntId, and new visitors now and then."""
        number = 0
        while not self.stop.is_set():
            value = f"p{number}"
            visitor = VISITORS[number % len(VISITORS)] if number % 4 else None
            number += 1
            payload: dict[str, object] = {
                "execute": {"pageLoad": {"profileParameters": {"p": value}}}
            }
            if visitor:
                payload["id"] = {"tntId": visitor}
            response = self.call(
                "POST", "/rest/v1/delivery?client=demo&sessionId=soak", json=payload
            )
            self.counts["visits"] += 1
            if response is not None and response.status_code == 200:
                tnt_id = response.json()["id"]["tntId"]
                self.visits.setdefault(tnt_id, Writes()).confirmed(value)
            elif response is None or response.status_code >= 500:
                if visitor:
                    self.visits.setdefault(visitor, Writes()).unknown(value)
                else:
                    self.lost_visitors.add(value)
            else:
                self.note(f"page call: {response.status_code} {response.text}")
            time.sleep(PAUSE)

    # -- reads ---------------------------------------------------------------------------------

    def reads(self, seed: int) -> None:
        """Fetch profiles and poll statuses (XML and JSON); counts only ever grow, and add up."""
        rnd = random.Random(seed)
        while not self.stop.is_set():
            roll = rnd.random()
            if roll < 0.4 or not self.accepted:
                kind = rnd.choice(["pc", "tp", "visitor"])
                identifier = (
                    rnd.choice(VISITORS) if kind == "visitor" else f"id{rnd.randrange(IDS)}"
                )
                prefix = "thirdPartyId/" if kind == "tp" else ""
                response = self.call("GET", f"/rest/v1/profiles/{prefix}{identifier}?client=demo")
                self.counts["fetches"] += 1
                if response is not None and response.status_code in range(400, 500):
                    if response.status_code != 404:
                        self.note(f"fetch {identifier}: {response.status_code} {response.text}")
            else:
                batch = rnd.choice(self.accepted)
                self.poll(batch.batch_id, json_status=roll > 0.7)
            time.sleep(PAUSE)

    def poll(self, batch_id: str, json_status: bool) -> dict[str, str] | None:
        if json_status:
            response = self.call("GET", f"/profilebase/v1/clients/demo/batches/{batch_id}")
        else:
            response = self.call(
                "GET",
                "/m2/demo/profile/batchStatus",
                params={"batchId": batch_id, "showDetails": "true"},
            )
        self.counts["polls"] += 1
        if response is None or response.status_code >= 500:
            return None
        if response.status_code != 200:
            self.note(f"status of {batch_id}: {response.status_code} {response.text}")
            return None
        if json_status:
            data = response.json()
            fields = {name: str(data[name]) for name in COUNT_FIELDS + ("status",)}
        else:
            fields = xml_fields(response)
        size, consumed, *parts = (int(fields[name]) for name in COUNT_FIELDS)
        if not (consumed == sum(parts) and consumed <= size):
            self.note(f"status of {batch_id} does not add up: {fields}")
        if consumed < self.seen.get(batch_id, 0):
            self.note(f"consumedCount of {batch_id} went back: {fields}")
        self.seen[batch_id] = max(consumed, self.seen.get(batch_id, 0))
        if fields["status"] == "complete":
            self.complete[batch_id] = fields
        elif fields["status"] != "incomplete":
            self.note(f"status of {batch_id} is {fields['status']}")
        return fields


COUNT_FIELDS = (
    "batchSize",
    "consumedCount",
    "successfulUpdates",
    "profilesNotFound",
    "failedUpdates",
)


# -- the checks --------------------------------------------------------------------------------


def expected_batches(load: Load) -> dict[str, tuple[int, ...]]:
    """Each batch's counts by the one-by-one model, batches of each key kind in acceptance
    order (pcId and thirdPartyId profiles never meet: no page call links them)."""
    expected = {}
    for kind in ("pcId", "thirdPartyId"):
        batches = sorted((b for b in load.accepted if b.kind == kind), key=lambda b: b.seq)
        _, counts = model([(b.v2, b.rows) for b in batches])
        for batch, (ok, missing) in zip(batches, counts, strict=True):
            size = len(batch.rows) + batch.bad
            expected[batch.batch_id] = (size, size, ok, missing, batch.bad)
    return expected


def check_profiles(load: Load, exported: list[dict]) -> list[str]:
    """Compare every exported profile with the model; return what differs."""
    wanted: dict[tuple[str, str], dict[str, str]] = {}
    for kind in ("pcId", "thirdPartyId"):
        batches = sorted((b for b in load.accepted if b.kind == kind), key=lambda b: b.seq)
        profiles, _ = model([(b.v2, b.rows) for b in batches])
        wanted.update({(kind, identifier): attrs for identifier, attrs in profiles.items()})
    problems = []
    orphans = set(load.lost_visitors)
    seen = set()
    for profile in exported:
        attrs = {name: a["value"] for name, a in profile["profileAttributes"].items()}
        kind = "thirdPartyId" if "thirdPartyId" in profile else "pcId"
        key = (kind, profile["visitorId"])
        seen.add(key)
        if key in wanted:
            writes = load.updates.get(key, Writes())
            if attrs.pop("s", None) not in writes.allowed:
                problems.append(f"{key}: s is not the last update's ({writes.allowed})")
            if attrs != wanted[key]:
                problems.append(f"{key}: {attrs} != model {wanted[key]}")
        elif key[1] in load.visits and key[0] == "pcId":
            if attrs.get("p") not in load.visits[key[1]].allowed or set(attrs) != {"p"}:
                problems.append(f"{key}: {attrs}, page calls allow {load.visits[key[1]].allowed}")
        elif set(attrs) == {"p"} and attrs["p"] in orphans:
            orphans.discard(attrs["p"])  # a new visitor whose reply was lost
        else:
            problems.append(f"{key}: {attrs} was never written")
    missing = [key for key in wanted if key not in seen]
    missing += [
        ("pcId", v)
        for v, writes in load.visits.items()
        if ("pcId", v) not in seen and None not in writes.allowed
    ]
    if missing:
        problems.append(f"profiles missing from the store: {missing}")
    return problems


def test_soak_with_processes_killed_and_restarted(cluster: Cluster):
    """Every accepted batch completes exactly, profiles equal the model, no 5xx outside restarts,
    memory and descriptors of the surviving processes back near their warmed-up level."""
    load = Load(cluster, seed=9)
    try:
        soak(cluster, load)
    finally:
        load.close()


def soak(cluster: Cluster, load: Load) -> None:
    # Profiles the single updates need, before any fault.
    seed_rows = [[f"id{n}"] for n in range(SEEDED)]
    seeds = [load.send_batch(kind, True, seed_rows, "plain") for kind in ("pcId", "thirdPartyId")]
    for batch_id in seeds:
        assert batch_id is not None
        wait_until(lambda b=batch_id: (load.poll(b, False) or {}).get("status") == "complete")

    threads = [
        threading.Thread(target=load.run, args=arguments)
        for arguments in [
            (load.batches, ["pcId"], 1),
            (load.batches, ["thirdPartyId"], 2),
            (load.batches, ["pcId", "thirdPartyId"], 3),
            (load.single_updates,),
            (load.page_calls,),
            (load.reads, 4),
        ]
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    try:
        kills = list(zip(KILLS_AT, cluster.schedule, strict=True))
        while (elapsed := time.monotonic() - started) < LOAD_SECONDS:
            cluster.measure_warm(time.monotonic())
            if kills and elapsed >= kills[0][0]:
                cluster.kill(kills.pop(0)[1])
            time.sleep(0.2)
    finally:
        load.stop.set()
        for thread in threads:
            thread.join(150)
    load_ended = time.monotonic()

    # Every accepted batch completes, with the counts of the one-by-one model.
    findings = list(load.problems)
    waiting = drain(load, timeout=30)
    drained = time.monotonic()
    if waiting:
        first = min(waiting, key=lambda b: b.seq)
        reply = load.call("GET", f"/profilebase/v1/clients/demo/batches/{first.batch_id}")
        standing = {k: v for k, v in reply.json().items() if k in STANDING} if reply else None
        findings.append(
            f"{len(waiting)} of {len(load.accepted)} batches not complete 30 s after the load; "
            f"the first accepted of them: {standing}"
        )
    expected = expected_batches(load)
    for batch_id, fields in load.complete.items():
        counts = tuple(int(fields[name]) for name in COUNT_FIELDS)
        if counts != expected[batch_id]:
            findings.append(f"{batch_id}: counts {counts}, the model says {expected[batch_id]}")

    # The stored profiles equal the model (only meaningful once every batch is applied).
    response = load.call("GET", "/rest/v1/profiles", params={"client": "demo"})
    assert response is not None and response.status_code == 200
    exported = [json.loads(line) for line in response.text.splitlines()]
    if not waiting:
        findings += check_profiles(load, exported)

    outside = [r for r in load.replies if r[1] >= 500 and not cluster.in_window(r[0])]
    findings += [f"{status} outside a restart on {path}" for _, status, path in outside]
    dropped = [d for d in load.dropped if not cluster.in_window(d[0])]
    findings += [
        f"connection dropped ({error}) outside a restart on {p}" for _, error, p in dropped
    ]

    # Memory and descriptors of the processes that ran from warm-up to the end.
    usages = {n.name: (n.baseline, usage(n.pid)) for n in cluster.nodes if n.baseline}
    if not usages:
        findings.append("no process ran long enough to be measured")
    for name, ((rss0, fds0), (rss1, fds1)) in usages.items():
        if rss1 > rss0 * 1.25 + 20_000:
            findings.append(f"{name}: VmRSS grew from {rss0} kB to {rss1} kB")
        if fds1 > fds0 + 6:
            findings.append(f"{name}: open file descriptors grew from {fds0} to {fds1}")

    rows = sum(len(b.rows) + b.bad for b in load.accepted)
    print(
        f"\nsoak on {cluster.backend}: {LOAD_SECONDS:g} s of load, "
        f"{sum(node.kills for node in cluster.nodes)} kills, restart windows "
        f"{[round(end - start, 1) for start, end in cluster.windows]} s; {load.counts}; "
        f"{len(load.accepted)} batches, {rows} rows, complete {drained - load_ended:.1f} s "
        f"after the load; {len(load.dropped)} dropped connections and "
        f"{sum(1 for r in load.replies if r[1] >= 500)} 5xx in all; {len(exported)} profiles; "
        f"{cluster.log.read_text(errors='replace').count('Traceback')} tracebacks in the log"
    )
    for name, ((rss0, fds0), (rss1, fds1)) in usages.items():
        print(f"  {name}: VmRSS {rss0 // 1024} -> {rss1 // 1024} MB, open fds {fds0} -> {fds1}")
    assert not findings, "\n".join(finding[:500] for finding in findings[:20])


#: The fields of the JSON status that say where a batch stands and why.
STANDING = ("batchId", "status", "state", "reason", "batchSize", "consumedCount", "units")


def drain(load: Load, timeout: float) -> list[Accepted]:
    """Poll until every accepted batch is complete; return those that are not by ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        for batch in load.accepted:
            if batch.batch_id not in load.complete:
                load.poll(batch.batch_id, json_status=False)
                if batch.batch_id not in load.complete:
                    break  # look again after a pause
        waiting = [b for b in load.accepted if b.batch_id not in load.complete]
        if not waiting or time.monotonic() > deadline:
            return waiting
        time.sleep(0.5)
