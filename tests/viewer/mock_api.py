#!/usr/bin/env python3
"""Development mock of the `scope serve` JSON API (Python 3 stdlib only).

    python3 tests/viewer/mock_api.py --port 8765 --token t [--delay-ms 150]

Serves the viewer assets from scope-agent/src/serve/assets at /, /app.js and
/style.css, and canned but internally consistent JSON for two sessions: the
newest has 2 threads, ~30 functions, nested calls down to depth 6, one call
that never returned, dropped-event marks, governor sampling windows, one
finding and a small fake source file. Like the real server, /api/sessions
counts each session's calls and threads. With
`--flame-nodes N`, the unfiltered flame graph (all threads, no range) gets an
extra top-level frame `synthetic_workload` holding a random tree of N nodes,
to try the viewer on big trees. Every /api/ call needs the header
`X-Scope-Token: TOKEN` (401 otherwise). Epoch nanoseconds exceed 2^53, so, as
the real server does, any *_ns or id >= 2^53 is sent as a decimal string.
"""

import argparse
import json
import random
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

ASSETS = Path(__file__).resolve().parents[2] / "scope-agent" / "src" / "serve" / "assets"
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
BIG = 2 ** 53
K = 40  # stretches the generated durations to a recording of about a second


def j(v):
    """Integers >= 2^53 travel as strings, like the real server sends them."""
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= BIG:
        return str(v)
    return v


# --------------------------------------------------------------------------
# Fake program: functions, their files and who calls whom.
# --------------------------------------------------------------------------
# name -> (module, file, line, self time range in ns, [(callee, min, max calls)])
PROGRAM = {
    "main": ("ingest", "src/main.c", 12, (2_000, 9_000), [("load_config", 1, 1), ("run_pipeline", 14, 14), ("log_message", 1, 2)]),
    "load_config": ("ingest", "src/config.c", 40, (30_000, 60_000), [("read_file", 1, 1), ("parse_json", 1, 1)]),
    "read_file": ("ingest", "src/io.c", 18, (80_000, 200_000), [("sys_read", 2, 6)]),
    "sys_read": ("libc.so.6", "", 0, (5_000, 40_000), []),
    "run_pipeline": ("ingest", "src/pipeline.c", 53, (5_000, 20_000), [("read_file", 1, 1), ("parse_json", 1, 2), ("compress_block", 1, 3), ("write_output", 1, 1), ("queue_push", 2, 5)]),
    "parse_json": ("ingest", "src/json.c", 101, (3_000, 12_000), [("parse_object", 2, 6)]),
    "parse_object": ("ingest", "src/json.c", 140, (1_000, 6_000), [("parse_string", 2, 5), ("parse_array", 0, 2), ("alloc_node", 1, 3), ("hash_map_insert", 1, 4)]),
    "parse_array": ("ingest", "src/json.c", 188, (800, 4_000), [("parse_number", 2, 8), ("parse_string", 0, 3), ("alloc_node", 1, 2)]),
    "parse_string": ("ingest", "src/json.c", 230, (300, 2_500), [("normalize_utf8", 0, 1)]),
    "parse_number": ("ingest", "src/json.c", 262, (150, 900), []),
    "normalize_utf8": ("ingest", "src/utf8.c", 9, (200, 3_000), []),
    "alloc_node": ("ingest", "src/arena.c", 22, (80, 400), []),
    "hash_map_insert": ("ingest", "src/hashmap.c", 55, (200, 1_200), [("hash_bytes", 1, 1), ("hash_map_lookup", 0, 1)]),
    "hash_map_lookup": ("ingest", "src/hashmap.c", 31, (100, 600), [("hash_bytes", 1, 1)]),
    "hash_bytes": ("ingest", "src/hashmap.c", 8, (60, 300), []),
    "compress_block": ("ingest", "src/compress.c", 77, (2_000, 8_000), [("lz4_compress", 1, 1), ("crc32", 1, 1)]),
    "lz4_compress": ("liblz4.so.1", "", 0, (60_000, 400_000), []),
    "crc32": ("libz.so.1", "", 0, (8_000, 30_000), []),
    "write_output": ("ingest", "src/io.c", 96, (4_000, 15_000), [("flush_buffer", 1, 2), ("log_message", 0, 1)]),
    "flush_buffer": ("ingest", "src/io.c", 120, (1_000, 5_000), [("sys_write", 1, 1)]),
    "sys_write": ("libc.so.6", "", 0, (20_000, 150_000), []),
    "log_message": ("ingest", "src/log.c", 15, (1_000, 4_000), [("format_timestamp", 1, 1)]),
    "format_timestamp": ("ingest", "src/log.c", 44, (400, 1_500), []),
    "queue_push": ("ingest", "src/queue.c", 30, (300, 1_000), [("mutex_lock", 1, 1), ("mutex_unlock", 1, 1)]),
    "queue_pop": ("ingest", "src/queue.c", 52, (300, 1_000), [("mutex_lock", 1, 1), ("mutex_unlock", 1, 1)]),
    "mutex_lock": ("libc.so.6", "", 0, (50, 30_000), []),
    "mutex_unlock": ("libc.so.6", "", 0, (40, 200), []),
    "worker_loop": ("ingest", "src/pipeline.c", 40, (1_000, 3_000), [("queue_pop", 1, 1), ("process_batch", 1, 1)]),
    "process_batch": ("ingest", "src/pipeline.c", 21, (5_000, 15_000), [("parse_record", 6, 14), ("validate_record", 6, 14), ("log_message", 0, 1)]),
    "parse_record": ("ingest", "src/pipeline.c", 6, (1_000, 6_000), [("decode_field", 2, 5), ("hash_map_lookup", 1, 2)]),
    "decode_field": ("ingest", "src/pipeline.c", 14, (300, 2_000), [("normalize_utf8", 0, 1), ("parse_number", 0, 1)]),
    "validate_record": ("ingest", "src/validate.c", 27, (2_000, 12_000), [("hash_map_lookup", 1, 3)]),
}
NAMES = list(PROGRAM)
FID = {name: i + 1 for i, name in enumerate(NAMES)}
# Hot functions whose calls the governor sampled: their counts are estimates.
ESTIMATED = {"hash_bytes", "alloc_node", "mutex_lock"}

SOURCE_FILE = "src/pipeline.c"
SOURCE_TEXT = r"""/* pipeline.c — record parsing and the worker loop */
#include "pipeline.h"
#include "hashmap.h"
#include "log.h"

static int parse_record(const char *buf, size_t len, record_t *out)
{
	size_t pos = 0;
	for (int i = 0; i < out->nfields && pos < len; i++)
		pos += decode_field(buf + pos, len - pos, &out->fields[i]);
	return hash_map_lookup(schema_index, out->kind) ? 0 : -1;
}

static size_t decode_field(const char *p, size_t n, field_t *f)
{
	if (f->type == FIELD_STRING)
		return normalize_utf8(p, n, &f->str);
	return parse_number(p, n, &f->num);
}

int process_batch(batch_t *b)
{
	int bad = 0;
	for (size_t i = 0; i < b->count; i++) {
		record_t r = { .nfields = b->schema->nfields };
		if (parse_record(b->rows[i].data, b->rows[i].len, &r) < 0) {
			bad++;
			continue;
		}
		/* validation re-reads the whole schema for every record */
		for (int pass = 0; pass < 2; pass++)
			if (!validate_record(&r, b->schema))
				bad++;
	}
	if (bad)
		log_message(LOG_WARN, "batch %lu: %d bad records", b->id, bad);
	return bad;
}

void *worker_loop(void *arg)
{
	queue_t *q = arg;
	for (;;) {
		batch_t *b = queue_pop(q);
		if (!b)
			break;
		process_batch(b);
		batch_free(b);
	}
	return NULL;
}

int run_pipeline(const config_t *cfg)
{
	/* producer side: read, parse, compress, hand batches to the workers */
	return 0;
}
"""


class Session:
    def __init__(self, sid, command, pid, start_ns, tids, scale, seed):
        self.session_id, self.command, self.pid, self.start_ns = sid, command, pid, start_ns
        self.synthetic_nodes = 0  # --flame-nodes
        self.rng = random.Random(seed)
        self.calls = []  # dicts: call_id, parent, fid, name, depth, tid, start, dur, self, path
        self.seq = 0
        t0 = start_ns + 1_200_000
        # Thread 1: main -> load_config + run_pipeline iterations (depth up to 6).
        self.gen(tids[0], "main", 0, t0, None, (), scale)
        # Thread 2: worker_loop never returns (killed when the session stopped).
        w0 = t0 + 3_500_000
        self.worker(tids[1], w0, scale)
        self.end_ns = max(c["start"] + (c["dur"] or 0) for c in self.calls) + 800_000
        self.calls.sort(key=lambda c: (c["tid"], c["start"], c["depth"]))
        self.by_tid = {}
        for c in self.calls:
            self.by_tid.setdefault(c["tid"], []).append(c)
        self.by_id = {c["call_id"]: c for c in self.calls}
        span = self.end_ns - start_ns
        r = self.rng
        self.losses = sorted(
            (s, s + r.randint(20_000, 400_000), r.randint(3, 900))
            for s in (start_ns + int(span * f) for f in (0.18, 0.41, 0.42, 0.77)))
        self.windows = [(start_ns + int(span * a), start_ns + int(span * b))
                        for a, b in ((0.05, 0.15), (0.30, 0.38), (0.55, 0.70), (0.85, 0.93))]

    def new_id(self, tid):
        self.seq += 1
        return (tid << 40) | self.seq  # > 2^53: travels as a string

    def gen(self, tid, name, depth, start, parent, path, scale):
        """Generates one call and its subtree; returns its end time."""
        module, file, line, (slo, shi), callees = PROGRAM[name]
        cid = self.new_id(tid)
        call = {"call_id": cid, "parent": parent, "fid": FID[name], "name": name, "depth": depth,
                "tid": tid, "start": start, "dur": None, "self": None, "path": path + (name,)}
        self.calls.append(call)
        r = self.rng
        t = start + K * r.randint(slo, shi) // 4
        self_ns = t - start
        if depth < 6:
            for callee, lo, hi in callees:
                n = r.randint(lo, hi)
                if name == "main" and callee == "run_pipeline":
                    n = max(2, int(n * scale))
                for _ in range(n):
                    gap = K * r.randint(slo, shi) // (2 * max(1, len(callees)))
                    t += gap
                    self_ns += gap
                    t = self.gen(tid, callee, depth + 1, t, cid, call["path"], scale)
        tail = K * r.randint(slo, shi) // 4
        t += tail
        call["dur"] = t - start
        call["self"] = self_ns + tail
        return t

    def worker(self, tid, start, scale):
        cid = self.new_id(tid)
        call = {"call_id": cid, "parent": None, "fid": FID["worker_loop"], "name": "worker_loop", "depth": 0,
                "tid": tid, "start": start, "dur": None, "self": None, "path": ("worker_loop",)}
        self.calls.append(call)
        t = start + 2_000
        for _ in range(int(60 * scale)):
            t = self.gen(tid, "queue_pop", 1, t + K * self.rng.randint(5_000, 80_000), cid, call["path"], scale)
            t = self.gen(tid, "process_batch", 1, t + K * 1_500, cid, call["path"], scale)
        # left open: duration_ns null, like a call still running when recording stopped

    # ---------------------------------------------------------------- API
    def summary(self):
        return {"session_id": self.session_id, "command": self.command, "pid": self.pid,
                "start_ns": j(self.start_ns), "end_ns": j(self.end_ns), "calls": len(self.calls),
                "threads": len({c["tid"] for c in self.calls})}

    def functions(self):
        rows = []
        for name in NAMES:
            cs = [c for c in self.calls if c["name"] == name]
            if not cs:
                continue
            done = sorted(c["dur"] for c in cs if c["dur"] is not None)
            module, file, line, _, _ = PROGRAM[name]
            n = len(cs)
            est = name in ESTIMATED
            calls = int(n * 3.1) if est else n

            def pct(p):
                return done[min(len(done) - 1, int(p * len(done)))] if done else None
            rows.append({"function_id": FID[name], "name": name, "module": module,
                         "file": file or None, "line": line or None, "calls": calls, "estimated": est,
                         "calls_low": int(calls * 0.93) if est else n, "calls_high": int(calls * 1.08) if est else n,
                         "total_ns": sum(done), "self_ns": sum(c["self"] for c in cs if c["self"] is not None),
                         "p50_ns": pct(0.5), "p99_ns": pct(0.99), "max_ns": done[-1] if done else None})
        rows.sort(key=lambda r: -r["total_ns"])
        return {"rows": rows}

    def histogram(self, fid):
        durs = [c["dur"] for c in self.calls if c["fid"] == fid and c["dur"]]
        if not durs:
            return {"buckets": []}
        counts = {}
        for d in durs:
            b = d.bit_length() - 1
            counts[b] = counts.get(b, 0) + 1
        return {"buckets": [{"lo_ns": 1 << b, "hi_ns": 1 << (b + 1), "count": counts.get(b, 0)}
                            for b in range(min(counts), max(counts) + 1)]}

    def threads(self):
        out = []
        for tid, cs in self.by_tid.items():
            out.append({"tid": tid, "calls": len(cs), "start_ns": j(cs[0]["start"]),
                        "end_ns": j(max(self.end_of(c) for c in cs)), "max_depth": max(c["depth"] for c in cs)})
        return {"threads": out}

    def end_of(self, c):
        return c["start"] + c["dur"] if c["dur"] is not None else self.end_ns

    def bar(self, c):
        return {"call_id": j(c["call_id"]), "function_id": c["fid"], "name": c["name"], "depth": c["depth"],
                "start_ns": j(c["start"]), "duration_ns": c["dur"], "self_ns": c["self"]}

    def timeline(self, tid, frm, to, width):
        npp = max(1, (to - frm) / max(1, width))  # ns per pixel
        bars, runs = [], {}
        hidden = []
        for c in self.by_tid.get(tid, []):
            end = self.end_of(c)
            if end < frm or c["start"] > to:
                continue
            if c["dur"] is None or c["dur"] >= npp:
                bars.append(self.bar(c))
                continue
            run = runs.get(c["depth"])
            if run and c["start"] - run["end"] <= npp:
                run["end"] = max(run["end"], end)
                run["calls"] += 1
            else:
                run = {"depth": c["depth"], "start": c["start"], "end": end, "calls": 1}
                runs[c["depth"]] = run
                hidden.append(run)
        return {"from_ns": j(frm), "to_ns": j(to), "bars": bars,
                "hidden": [{"depth": h["depth"], "start_ns": j(h["start"]), "end_ns": j(h["end"]), "calls": h["calls"]}
                           for h in hidden],
                "losses": [{"start_ns": j(s), "end_ns": j(e), "lost": n} for s, e, n in self.losses if e >= frm and s <= to],
                "windows": [{"start_ns": j(s), "end_ns": j(e)} for s, e in self.windows if e >= frm and s <= to]}

    def stack(self, tid, at):
        frames = []
        for c in self.by_tid.get(tid, []):
            if c["start"] <= at < self.end_of(c):
                _, file, line, _, _ = PROGRAM[c["name"]]
                frames.append({"call_id": j(c["call_id"]), "depth": c["depth"], "name": c["name"],
                               "function_id": c["fid"], "start_ns": j(c["start"]), "duration_ns": c["dur"],
                               "file": file or None, "line": line or None})
        frames.sort(key=lambda f: f["depth"])
        return {"at_ns": j(at), "tid": tid, "frames": frames}

    def flame(self, tid, frm, to):
        value = {}
        for c in self.calls:
            if tid is not None and c["tid"] != tid:
                continue
            s, e = c["start"], self.end_of(c)
            if frm is not None:
                s, e = max(s, frm), min(e, to)
            if e <= s:
                continue
            value[c["path"]] = value.get(c["path"], 0) + (e - s)

        root = {"name": "all", "value": 0, "self": 0, "children": []}
        nodes = {(): root}
        for path in sorted(value, key=len):
            parent = nodes.get(path[:-1])
            if parent is None:
                continue
            node = {"name": path[-1], "value": value[path], "self": value[path], "children": []}
            parent["children"].append(node)
            if parent is not root:
                parent["self"] -= node["value"]
            nodes[path] = node
        if tid is None and frm is None and self.synthetic_nodes:
            root["children"].append(synthetic_tree(self.synthetic_nodes, self.pid))
        root["value"] = sum(c["value"] for c in root["children"])

        def sort(n):
            n["children"].sort(key=lambda c: -c["value"])
            for c in n["children"]:
                sort(c)
        sort(root)
        return root

    def source(self, fid):
        name = NAMES[fid - 1] if 0 < fid <= len(NAMES) else None
        if name is None:
            return 404, {"error": f"no function {fid} in session {self.session_id}"}
        _, file, _, _, _ = PROGRAM[name]
        if file != SOURCE_FILE:
            where = file or f"{name} (no DWARF line info)"
            return 404, {"error": f"source not available: {where} was not found under /home/dev/ingest"}
        # per line: the calls made from that line (attributed like DWARF call sites)
        stats = {}
        site_callee = {10: "decode_field", 11: "hash_map_lookup", 17: "normalize_utf8", 18: "parse_number",
                       26: "parse_record", 32: "validate_record", 36: "log_message", 44: "queue_pop", 47: "process_batch"}
        for line, callee in site_callee.items():
            cs = [c for c in self.calls if c["name"] == callee and c["dur"] is not None]
            if cs:
                stats[line] = (len(cs), sum(c["dur"] for c in cs), sum(c["self"] for c in cs))
        for line, fname in ((21, "process_batch"), (6, "parse_record"), (14, "decode_field"), (40, "worker_loop")):
            cs = [c for c in self.calls if c["name"] == fname]
            stats[line] = (len(cs), sum(c["dur"] or 0 for c in cs), sum(c["self"] or 0 for c in cs))
        lines = []
        for i, text in enumerate(SOURCE_TEXT.rstrip("\n").split("\n"), 1):
            n, tot, slf = stats.get(i, (0, 0, 0))
            lines.append({"line": i, "text": text, "calls": n, "total_ns": tot, "self_ns": slf})
        return 200, {
            "file": "/home/dev/ingest/" + SOURCE_FILE,
            "lines": lines,
            "loops": [{"line": 9, "end_line": 10, "depth": 1}, {"line": 24, "end_line": 34, "depth": 1},
                      {"line": 31, "end_line": 33, "depth": 2}, {"line": 43, "end_line": 49, "depth": 1}],
            "call_sites": [{"line": l, "callee": c, "in_loop_line": {10: 9, 26: 24, 32: 31, 44: 43, 47: 43}.get(l)}
                           for l, c in site_callee.items()],
            "findings": [f for f in self.findings_list() if f["line"] and f["function_id"] in
                         {FID[n] for n in ("process_batch", "parse_record", "decode_field", "worker_loop")}],
        }

    def findings_list(self):
        n = sum(1 for c in self.calls if c["name"] == "validate_record")
        b = sum(1 for c in self.calls if c["name"] == "process_batch")
        return [{"id": "F1", "kind": "repeated_work", "severity": "warning", "confidence": 0.86,
                 "function": "validate_record", "function_id": FID["process_batch"],
                 "title": f"validate_record runs twice per record inside the loop of process_batch "
                          f"({n} calls over {b} batches); the second pass repeats the first",
                 "file": SOURCE_FILE, "line": 32}]

    def query(self, sql):
        low = " ".join(sql.lower().split())
        t0 = time.perf_counter()
        if not low or "error" in low or not low.startswith(("select", "with")):
            return 400, {"error": "SQL error: ParserError(\"Expected: an SQL statement, found: "
                                  + (sql.split() or ["EOF"])[0][:20] + "\")"}
        if "group by" in low:
            agg = {}
            for c in self.calls:
                a = agg.setdefault(c["name"], [0, 0])
                a[0] += 1
                a[1] += c["dur"] or 0
            rows = sorted(([k, v[0], v[1]] for k, v in agg.items()), key=lambda r: -r[2])[:20]
            cols = [{"name": "name", "type": "Utf8"}, {"name": "calls", "type": "Int64"},
                    {"name": "total_ns", "type": "Int64"}]
            trunc = False
        else:
            cols = [{"name": n, "type": t} for n, t in (("session_id", "Utf8"), ("tid", "UInt32"), ("call_id", "UInt64"),
                                                          ("function_id", "UInt32"), ("depth", "UInt16"),
                                                          ("start_ns", "Int64"), ("duration_ns", "Int64"))]
            rows = [[self.session_id, c["tid"], str(c["call_id"]), c["fid"], c["depth"], str(c["start"]), c["dur"]]
                    for c in self.calls[:200]]
            trunc = True
        return 200, {"columns": cols, "rows": rows, "truncated": trunc,
                     "elapsed_ms": round((time.perf_counter() - t0) * 1000 + 3.2, 1)}


def synthetic_tree(n, seed):
    """A random call tree of n nodes (about 0.6 s in all), sibling names distinct."""
    r = random.Random(seed)
    pool = [f"synth_{a}_{b}" for a in ("parse", "load", "hash", "encode", "visit", "merge", "scan", "emit")
            for b in range(100)]
    top = {"name": "synthetic_workload", "value": 0, "self": 0, "children": [], "depth": 0}
    nodes = [top]
    for _ in range(n - 1):
        # Favour recent nodes a little, so that the tree gets some depth.
        parent = nodes[min(len(nodes) - 1, int(len(nodes) * r.random() ** 0.35))]
        if parent["depth"] >= 24:
            parent = top
        taken = {c["name"] for c in parent["children"]}
        name = r.choice(pool)
        while name in taken:
            name = r.choice(pool) + f"_{len(taken)}"
        node = {"name": name, "value": 0, "self": r.randint(1, 2 * max(1, 600_000_000 // n)),
                "children": [], "depth": parent["depth"] + 1}
        parent["children"].append(node)
        nodes.append(node)
    for node in reversed(nodes):  # children come after their parents
        node["value"] = node["self"] + sum(c["value"] for c in node["children"])
        del node["depth"]
    return top


def build_sessions():
    now = 1_718_114_602_123_456_789  # 2024-06-11, far above 2^53
    return [
        Session("20240611-140322-4f1c", "./target/release/ingest --input data/events.jsonl --workers 1",
                48211, now, (48211, 48214), 1.0, 7),
        Session("20240611-131505-9a02", "./target/release/ingest --input data/small.jsonl --workers 1",
                47102, now - 2_937_000_000_000, (47102, 47105), 0.3, 3),
    ]


SESSIONS = build_sessions()


class Handler(BaseHTTPRequestHandler):
    token = ""
    delay = 0.0
    quiet = False

    def log_message(self, fmt, *args):
        if not self.quiet:
            sys.stderr.write("mock: " + (fmt % args) + "\n")

    def send_json(self, code, obj):
        body = json.dumps(obj, separators=(",", ":")).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.handle_req("GET")

    def do_POST(self):
        self.handle_req("POST")

    def handle_req(self, method):
        url = urlparse(self.path)
        if method == "GET" and url.path in STATIC:
            name, ctype = STATIC[url.path]
            try:
                body = (ASSETS / name).read_bytes()
            except OSError as e:
                return self.send_json(500, {"error": f"asset {name}: {e}"})
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)
            return
        if not url.path.startswith("/api/"):
            return self.send_json(404, {"error": f"not found: {url.path}"})
        if self.headers.get("X-Scope-Token") != self.token:
            return self.send_json(401, {"error": "missing or wrong token"})
        if self.delay:
            time.sleep(self.delay)
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            code, obj = self.route(method, url.path, q)
        except (KeyError, ValueError) as e:
            code, obj = 400, {"error": f"bad request: {e}"}
        self.send_json(code, obj)

    def route(self, method, path, q):
        if path == "/api/sessions":
            return 200, {"sessions": [s.summary() for s in SESSIONS]}
        if path == "/api/query":
            if method != "POST":
                return 405, {"error": "POST a JSON body {\"sql\": ...}"}
            n = int(self.headers.get("Content-Length") or 0)
            try:
                sql = json.loads(self.rfile.read(n) or b"{}").get("sql", "")
            except json.JSONDecodeError as e:
                return 400, {"error": f"body is not JSON: {e}"}
            return SESSIONS[0].query(sql)
        sid = q.get("session")
        if not sid:
            return 400, {"error": "missing parameter: session"}
        s = next((x for x in SESSIONS if x.session_id == sid), None)
        if s is None:
            return 404, {"error": f"no session {sid}"}
        if path == "/api/functions":
            return 200, s.functions()
        if path == "/api/histogram":
            return 200, s.histogram(int(q["function_id"]))
        if path == "/api/threads":
            return 200, s.threads()
        if path == "/api/timeline":
            tid = int(q["tid"])
            if tid not in s.by_tid:
                return 404, {"error": f"no thread {tid} in session {sid}"}
            frm, to = int(q["from"]), int(q["to"])
            if to <= frm:
                return 400, {"error": "to must be greater than from"}
            return 200, s.timeline(tid, frm, to, int(q.get("width", 1000)))
        if path == "/api/stack":
            return 200, s.stack(int(q["tid"]), int(q["at"]))
        if path == "/api/flame":
            tid = int(q["tid"]) if q.get("tid") else None
            frm = int(q["from"]) if q.get("from") else None
            to = int(q["to"]) if q.get("to") else None
            if (frm is None) != (to is None):
                return 400, {"error": "from and to go together"}
            return 200, s.flame(tid, frm, to)
        if path == "/api/source":
            return s.source(int(q["function_id"]))
        if path == "/api/findings":
            return 200, {"findings": s.findings_list()}
        return 404, {"error": f"no such endpoint: {path}"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--token", default="t")
    ap.add_argument("--delay-ms", type=int, default=0, help="added latency per API call")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--flame-nodes", type=int, default=0,
                    help="add a random subtree of this many nodes to the unfiltered flame graph")
    a = ap.parse_args()
    for s in SESSIONS:
        s.synthetic_nodes = max(0, a.flame_nodes)
    Handler.token, Handler.delay, Handler.quiet = a.token, a.delay_ms / 1000, a.quiet
    srv = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    print(f"http://127.0.0.1:{a.port}/?token={a.token}", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
