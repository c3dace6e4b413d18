"""Independent readers of scope's exports, for the export_* tests.

Each subcommand reads an export with a tool or library that scope does not
use to write it (Python's json and xml parsers, jsonschema with speedscope's
published schema, protoc's text output with Perfetto's published trace
proto, `go tool pprof -raw`), rebuilds what the export says (calls per
function name, self time per stack path, threads), and compares it with an
expectation file:

    {"calls": N, "threads": N, "counts": {name: calls},
     "self_by_path": {"main;a;b": ns}}

`expect-duckdb STORE` makes that file from a store's Parquet files with
DuckDB SQL (paths from parent_call_id, self time from self_ns), for the
demo data. Exits non-zero with a message on the first mismatch.
"""

import ast
import collections
import decimal
import gzip
import importlib.util
import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET


def fail(msg):
    print(f"export_check: {msg}", file=sys.stderr)
    sys.exit(1)


def compare(what, got, expect):
    if got != expect:
        keys = sorted(set(got) | set(expect)) if isinstance(got, dict) else []
        diff = [f"{k}: got {got.get(k)} expected {expect.get(k)}" for k in keys if got.get(k) != expect.get(k)]
        fail(f"{what} differ: " + ("; ".join(diff[:20]) if diff else f"got {got!r} expected {expect!r}"))


def nonzero(d):
    return {k: v for k, v in d.items() if v != 0}


class Replay:
    """Rebuilds calls per name and self time per path from open/close pairs
    of one thread, checking they nest and never go back in time."""

    def __init__(self, where):
        self.where = where
        self.stack = []  # [name, start, child_time]
        self.counts = collections.Counter()
        self.self_by_path = collections.Counter()
        self.last = None

    def time(self, t):
        if self.last is not None and t < self.last:
            fail(f"{self.where}: time goes back from {self.last} to {t}")
        self.last = t

    def open(self, name, t):
        self.time(t)
        self.stack.append([name, t, 0])
        self.counts[name] += 1

    def close(self, t, name=None):
        self.time(t)
        if not self.stack:
            fail(f"{self.where}: close at {t} with nothing open")
        top = self.stack[-1]
        if name is not None and top[0] != name:
            fail(f"{self.where}: close of {name} at {t} but {top[0]} is innermost")
        path = ";".join(f[0] for f in self.stack)
        self.stack.pop()
        dur = t - top[1]
        if dur < 0 or top[2] > dur:
            fail(f"{self.where}: {path} lasts {dur} with children of {top[2]}")
        self.self_by_path[path] += dur - top[2]
        if self.stack:
            self.stack[-1][2] += dur

    def finish(self):
        if self.stack:
            fail(f"{self.where}: {len(self.stack)} calls never closed: {[f[0] for f in self.stack]}")


def check_totals(fmt, expect, counts, self_by_path, threads=None, ns_scale=1):
    compare(f"{fmt}: calls per function", dict(counts), expect["counts"])
    got = {k: v * ns_scale for k, v in self_by_path.items()}
    got = {k: int(v) if v == int(v) else v for k, v in got.items()}
    compare(f"{fmt}: self time per path (ns)", nonzero(got), nonzero(expect["self_by_path"]))
    if threads is not None:
        compare(f"{fmt}: threads", threads, expect["threads"])


def chrome(path, expect):
    with open(path) as f:
        doc = json.load(f, parse_float=decimal.Decimal)
    events = doc["traceEvents"]
    by_thread = collections.defaultdict(list)
    names = {}
    for e in events:
        if e["ph"] == "X":
            for key in ("pid", "tid", "ts", "dur", "name"):
                if key not in e:
                    fail(f"chrome: an X event has no {key}: {e}")
            by_thread[(e["pid"], e["tid"])].append(e)
        elif e["ph"] == "M":
            if e["name"] == "thread_name":
                names[(e["pid"], e["tid"])] = e["args"]["name"]
        else:
            fail(f"chrome: unexpected phase {e['ph']}")
    counts = collections.Counter()
    self_by_path = collections.Counter()
    for key, evs in by_thread.items():
        if key not in names:
            fail(f"chrome: thread {key} has no thread_name")
        # Nesting from the intervals alone, as a viewer does: sort by start,
        # longest first; a slice must lie inside the innermost open one.
        evs.sort(key=lambda e: (e["ts"], -e["dur"]))
        r = Replay(f"chrome thread {key}")
        ends = []
        for e in evs:
            while ends and ends[-1] <= e["ts"]:
                r.close(ends.pop())
            if ends and e["ts"] + e["dur"] > ends[-1]:
                fail(f"chrome: {e['name']} at {e['ts']} (+{e['dur']}) overlaps the end of its parent at {ends[-1]} on {key}")
            r.open(e["name"], e["ts"])
            ends.append(e["ts"] + e["dur"])
        while ends:
            r.close(ends.pop())
        counts.update(r.counts)
        self_by_path.update(r.self_by_path)
    check_totals("chrome", expect, counts, self_by_path, len(by_thread), ns_scale=1000)
    return doc


def perfetto_descriptor(out):
    """Writes a FileDescriptorSet of perfetto_trace.proto as published in
    the PyPI package `perfetto` (its generated perfetto_trace_pb2.py holds
    the serialized FileDescriptorProto), for protoc --descriptor_set_in."""
    spec = importlib.util.find_spec("perfetto")
    if spec is None:
        fail("the Python package perfetto is missing: run `cargo xtask test`, which installs it")
    base = spec.submodule_search_locations[0]
    source = os.path.join(base, "protos/perfetto/trace/perfetto_trace_pb2.py")
    tree = ast.parse(open(source).read())
    data = None
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "AddSerializedFile":
            data = node.args[0].value
    if not isinstance(data, bytes):
        fail(f"no serialized descriptor in {source}")
    n, size = len(data), bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        size.append(b | (0x80 if n else 0))
        if not n:
            break
    with open(out, "wb") as f:
        f.write(b"\x0a" + bytes(size) + data)
    from importlib.metadata import version

    print(f"perfetto {version('perfetto')}: {source}")


def parse_textproto(text):
    """protoc's text format into nested lists of (key, value) pairs."""
    root, stack = [], []
    cur = root
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.endswith("{"):
            child = []
            cur.append((line[:-1].strip(), child))
            stack.append(cur)
            cur = child
        elif line == "}":
            cur = stack.pop()
        else:
            key, _, value = line.partition(":")
            value = value.strip()
            if value.startswith('"'):
                value = ast.literal_eval(value)
            cur.append((key.strip(), value))
    return root


def get(node, key, default=None):
    for k, v in node:
        if k == key:
            return v
    return default


def perfetto(text_path, expect):
    packets = [v for k, v in parse_textproto(open(text_path).read()) if k == "packet"]
    if not packets:
        fail("perfetto: protoc decoded no packet")
    names = {}
    tracks = {}
    replays = {}
    order = []
    for p in packets:
        for k, v in p:
            if k == "interned_data":
                for k2, en in v:
                    if k2 == "event_names":
                        names[get(en, "iid")] = get(en, "name")
        td = get(p, "track_descriptor")
        if td is not None:
            thread = get(td, "thread")
            if thread is not None:
                tracks[get(td, "uuid")] = (int(get(thread, "pid")), int(get(thread, "tid")))
        te = get(p, "track_event")
        if te is not None:
            uuid = get(te, "track_uuid")
            if uuid not in tracks:
                fail(f"perfetto: an event on track {uuid} before its TrackDescriptor")
            if uuid not in replays:
                replays[uuid] = Replay(f"perfetto track {tracks[uuid]}")
                order.append(uuid)
            ts = int(get(p, "timestamp"))
            kind = get(te, "type")
            if kind == "TYPE_SLICE_BEGIN":
                iid = get(te, "name_iid")
                if iid not in names:
                    fail(f"perfetto: name_iid {iid} used before it was interned")
                replays[uuid].open(names[iid], ts)
            elif kind == "TYPE_SLICE_END":
                replays[uuid].close(ts)
            else:
                fail(f"perfetto: unexpected event type {kind}")
    counts = collections.Counter()
    self_by_path = collections.Counter()
    for r in replays.values():
        r.finish()
        counts.update(r.counts)
        self_by_path.update(r.self_by_path)
    check_totals("perfetto", expect, counts, self_by_path, len(tracks))


def speedscope(path, expect, schema_path):
    import jsonschema

    with open(path) as f:
        doc = json.load(f)
    with open(schema_path) as f:
        schema = json.load(f)
    # The schema's root is a $ref into its definitions.
    jsonschema.validate(doc, schema)
    frames = doc["shared"]["frames"]
    counts = collections.Counter()
    self_by_path = collections.Counter()
    for prof in doc["profiles"]:
        if prof["type"] != "evented":
            fail(f"speedscope: profile type {prof['type']}")
        r = Replay(f"speedscope profile {prof['name']}")
        for e in prof["events"]:
            name = frames[e["frame"]]["name"]
            if e["type"] == "O":
                r.open(name, e["at"])
            else:
                r.close(e["at"], name)
            if not prof["startValue"] <= e["at"] <= prof["endValue"]:
                fail(f"speedscope: event at {e['at']} outside [{prof['startValue']}, {prof['endValue']}]")
        r.finish()
        counts.update(r.counts)
        self_by_path.update(r.self_by_path)
    check_totals("speedscope", expect, counts, self_by_path, len(doc["profiles"]))


def folded(path, expect):
    got = collections.Counter()
    for line in open(path):
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack or not count.isdigit():
            fail(f"folded: malformed line {line!r}")
        if stack in got:
            fail(f"folded: path {stack} appears twice")
        got[stack] = int(count)
    compare("folded: self time per path (ns)", dict(got), nonzero(expect["self_by_path"]))


def flamegraph(path, expect):
    root = ET.parse(path).getroot()
    titles = [t.text for t in root.iter("{http://www.w3.org/2000/svg}title")]
    total = sum(expect["self_by_path"].values())
    frames = {}
    for t in titles:
        m = re.match(r"^(.*) \(([\d,]+) ns, [\d.]+%\)$", t or "")
        if m:
            frames.setdefault(m.group(1), 0)
            frames[m.group(1)] += int(m.group(2).replace(",", ""))
    if "all" not in frames:
        fail(f"flamegraph: no 'all' frame among {titles[:5]}")
    compare("flamegraph: total ns", frames["all"], total)
    # A frame's width is the self time of the paths through it; summed over
    # a name's frames, each path counts once per position it has the name.
    per_position = collections.Counter()
    for p, v in expect["self_by_path"].items():
        for name in p.split(";"):
            per_position[name] += v
    got = {k: v for k, v in frames.items() if k != "all"}
    compare("flamegraph: widths per function (ns)", got, nonzero(dict(per_position)))


def pprof(path, expect):
    raw = subprocess.run(["go", "tool", "pprof", "-raw", path], capture_output=True, text=True)
    if raw.returncode != 0:
        fail(f"go tool pprof -raw failed: {raw.stderr}")
    lines = raw.stdout.splitlines()
    try:
        s = lines.index("Samples:")
        l = lines.index("Locations")
    except ValueError:
        fail(f"go tool pprof -raw: no Samples/Locations in {raw.stdout[:500]}")
    if lines[s + 1].replace("[dflt]", "").split() != ["calls/count", "wall/nanoseconds"]:
        fail(f"pprof: sample types {lines[s + 1]}")
    locations = {}
    for line in lines[l + 1 :]:
        m = re.match(r"^\s+(\d+): 0x0 M=\d+ (\S+) ", line)
        if m:
            locations[m.group(1)] = m.group(2)
        elif line.strip() == "Mappings":
            break
    counts = collections.Counter()
    self_by_path = collections.Counter()
    for line in lines[s + 2 : l]:
        m = re.match(r"^\s*(\d+)\s+(\d+): ([\d ]+)$", line.rstrip())
        if not m:
            fail(f"pprof: unexpected sample line {line!r}")
        stack = [locations[i] for i in m.group(3).split()]
        counts[stack[0]] += int(m.group(1))
        self_by_path[";".join(reversed(stack))] += int(m.group(2))
    check_totals("pprof", expect, counts, self_by_path)
    top = subprocess.run(["go", "tool", "pprof", "-top", "-nodefraction=0", path], capture_output=True, text=True)
    if top.returncode != 0:
        fail(f"go tool pprof -top failed: {top.stderr}")
    for name in expect["counts"]:
        if name not in top.stdout:
            fail(f"pprof -top does not list {name}:\n{top.stdout}")
    with gzip.open(path) as f:
        f.read()


def expect_duckdb(store):
    import duckdb

    c = duckdb.connect()
    calls = f"read_parquet('{store}/calls/**/*.parquet', hive_partitioning = true)"
    functions = f"read_parquet('{store}/functions/**/*.parquet', hive_partitioning = true)"
    rows = c.sql(
        f"""
        WITH RECURSIVE c AS (SELECT c.*, f.name FROM {calls} c JOIN {functions} f USING (session_id, function_id)),
        p(session_id, call_id, path) AS (
            SELECT session_id, call_id, name FROM c WHERE parent_call_id IS NULL
            UNION ALL
            SELECT c.session_id, c.call_id, p.path || ';' || c.name
            FROM c JOIN p ON c.session_id = p.session_id AND c.parent_call_id = p.call_id)
        SELECT path, sum(self_ns)::BIGINT FROM p JOIN c USING (session_id, call_id) GROUP BY path
        """
    ).fetchall()
    counts = c.sql(f"SELECT name, count(*) FROM {calls} JOIN {functions} USING (session_id, function_id) GROUP BY name").fetchall()
    n, threads = c.sql(f"SELECT count(*), count(DISTINCT struct_pack(pid := pid, tid := tid)) FROM {calls}").fetchall()[0]
    print(
        json.dumps(
            {
                "calls": n,
                "threads": threads,
                "counts": dict(counts),
                "self_by_path": dict(rows),
            }
        )
    )


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "expect-duckdb":
        expect_duckdb(args[0])
        return
    if cmd == "perfetto-descriptor":
        perfetto_descriptor(args[0])
        return
    with open(args[1]) as f:
        expect = json.load(f)
    if cmd == "chrome":
        chrome(args[0], expect)
    elif cmd == "perfetto":
        perfetto(args[0], expect)
    elif cmd == "speedscope":
        speedscope(args[0], expect, args[2])
    elif cmd == "folded":
        folded(args[0], expect)
    elif cmd == "flamegraph":
        flamegraph(args[0], expect)
    elif cmd == "pprof":
        pprof(args[0], expect)
    else:
        fail(f"unknown subcommand {cmd}")
    print(f"{cmd}: ok")


if __name__ == "__main__":
    main()
