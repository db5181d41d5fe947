#!/usr/bin/env python3
"""Helper for bench/run.sh (python3 standard library only).

Subcommands:
  sample      background sampler: every 200 ms, /proc/stat and the client backends on F
              (grouped by application_name), one line per sample, until SIGTERM or EOF
  rss         /proc/PID/status sampler (every 50 ms) around one large-result query
  pgbench-row turn one pgbench run (output, per-transaction logs, samples) into a result row
  large-row   turn one large-result run (psql output, rss result, samples) into a result row
  report      medians over repeats, ratios, the aligned table and the CSV files
"""

import argparse
import csv
import glob
import json
import math
import os
import re
import subprocess
import sys
import time

# application_name of the connections each method opens on F (set in run.sh's conninfos,
# or the client's own default).  Used to count the method's own connections on F.
GROUPS = ["bench_direct", "bench_dblink", "bench_pgbouncer", "postgres_fdw", "dbpool"]
METHOD_GROUP = {
    "direct": "bench_direct",
    "dblink_persistent": "bench_dblink",
    "dblink_oneshot": "bench_dblink",
    "dblink_via_pgbouncer": "bench_pgbouncer",
    "dblink_persistent_via_pgbouncer": "bench_pgbouncer",
    "postgres_fdw": "postgres_fdw",
    "dbpool": "dbpool",
    "dbpool_scraped": "dbpool",   # dbpool while its metrics endpoint is scraped (SCRAPE_MS)
}
METHOD_ORDER = list(METHOD_GROUP)
WORKLOAD_ORDER = ["point", "slow", "large"]
BASELINES = ["dblink_persistent", "dblink_persistent_via_pgbouncer"]

COLUMNS = [
    "method", "workload", "clients", "runs", "tps", "tps_min", "tps_max", "mean_ms", "p99_ms",
    "txns", "f_conns", "f_conns_all", "cpu_busy_pct", "ratio_vs_dblink_persistent",
    "ratio_vs_dblink_persistent_via_pgbouncer", "elapsed_s", "backend_vmhwm_mb",
    "backend_rssanon_peak_mb", "worker_rssanon_growth_mb", "status", "note",
]
# Short headings for the printed table.
HEADINGS = {
    "clients": "cli", "tps_min": "tps_min", "tps_max": "tps_max",
    "ratio_vs_dblink_persistent": "vs_dbl_pers",
    "ratio_vs_dblink_persistent_via_pgbouncer": "vs_dbl_pers_pgb",
    "cpu_busy_pct": "cpu%", "backend_vmhwm_mb": "be_hwm_mb",
    "backend_rssanon_peak_mb": "be_anon_mb", "worker_rssanon_growth_mb": "wk_anon+mb",
    "f_conns_all": "f_all",
}


# ---------------------------------------------------------------------------------------
# sample

def read_cpu():
    with open("/proc/stat") as f:
        fields = f.readline().split()
    # user nice system idle iowait irq softirq steal (guest is already in user)
    vals = [int(x) for x in fields[1:9]]
    total = sum(vals)
    idle = vals[3] + vals[4]
    return total - idle, total


def cmd_sample(a):
    # SIGTERM ends this process at once (quietly, status 0); psql then sees EOF and exits.
    import select
    import signal
    signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(0))
    cols = ", ".join(
        "count(*) FILTER (WHERE application_name = '%s')" % g for g in GROUPS)
    query = ("SELECT count(*), %s FROM pg_stat_activity "
             "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid();\n" % cols)
    psql = subprocess.Popen(
        [a.psql, "-X", "-q", "-At", "-F", " ", "-h", a.host, "-p", str(a.port),
         "-U", "postgres", "-d", "postgres"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    with open(a.out, "a", buffering=1) as out:
        out.write("# t busy total all %s\n" % " ".join(GROUPS))
        buf = b""
        while True:
            t0 = time.time()
            busy, total = read_cpu()
            try:
                psql.stdin.write(query.encode())
                psql.stdin.flush()
            except (BrokenPipeError, OSError):
                break
            line = None
            deadline = t0 + 5
            while b"\n" not in buf and time.time() < deadline:
                r, _, _ = select.select([psql.stdout], [], [], max(0.0, deadline - time.time()))
                if not r:
                    break
                chunk = os.read(psql.stdout.fileno(), 4096)
                if not chunk:
                    return      # psql has gone: F stopped
                buf += chunk
            if b"\n" in buf:
                line, _, buf = buf.partition(b"\n")
                out.write("%.3f %d %d %s\n" % (t0, busy, total, line.decode().strip()))
            delay = a.interval - (time.time() - t0)
            if delay > 0:
                time.sleep(delay)


def load_samples(path):
    rows = []
    if not path or not os.path.exists(path):
        return rows
    with open(path) as f:
        for line in f:
            if line.startswith("#"):
                continue
            p = line.split()
            if len(p) != 4 + len(GROUPS):
                continue
            try:
                t = float(p[0])
                busy, total = int(p[1]), int(p[2])
                counts = [int(x) for x in p[3:]]
            except ValueError:
                continue
            rows.append((t, busy, total, counts[0], dict(zip(GROUPS, counts[1:]))))
    return rows


def window_stats(samples, t_start, t_end, method):
    """Peak connections of the method's group and of all client backends on F, and the
    machine's CPU busy percentage, from the samples taken inside [t_start, t_end]."""
    inside = [s for s in samples if t_start <= s[0] <= t_end]
    res = {"f_conns": "", "f_conns_all": "", "cpu_busy_pct": ""}
    if not inside:
        return res
    group = METHOD_GROUP.get(method)
    res["f_conns"] = max(s[4][group] for s in inside) if group else ""
    res["f_conns_all"] = max(s[3] for s in inside)
    if len(inside) >= 2:
        first, last = inside[0], inside[-1]
        dt = last[2] - first[2]
        if dt > 0:
            res["cpu_busy_pct"] = round(100.0 * (last[1] - first[1]) / dt, 1)
    return res


# ---------------------------------------------------------------------------------------
# rss

def proc_status(pid):
    vals = {}
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmHWM", "RssAnon", "VmRSS"):
                    vals[k] = int(v.split()[0])
    except (OSError, ValueError):
        return None
    return vals


def cmd_rss(a):
    """Baseline sample, then create --go; sample every --interval until --qdone appears (the
    query has finished), take a final sample, write the result, create --release."""
    pids = {"backend": a.backend}
    if a.worker:
        pids["worker"] = a.worker
    res = {}
    for name, pid in pids.items():
        st = proc_status(pid) or {}
        res[name] = {"anon_before": st.get("RssAnon"), "anon_peak": st.get("RssAnon"),
                     "hwm": st.get("VmHWM"), "samples": 0}

    def take():
        for name, pid in pids.items():
            st = proc_status(pid)
            if not st:
                continue
            r = res[name]
            r["samples"] += 1
            if st.get("RssAnon") is not None:
                r["anon_peak"] = max(r["anon_peak"] or 0, st["RssAnon"])
            if st.get("VmHWM") is not None:
                r["hwm"] = max(r["hwm"] or 0, st["VmHWM"])

    open(a.go, "w").close()
    res["t_go"] = time.time()
    deadline = time.time() + a.timeout
    while not os.path.exists(a.qdone) and time.time() < deadline:
        take()
        time.sleep(a.interval)
    take()
    res["t_done"] = time.time()
    res["finished"] = os.path.exists(a.qdone)
    with open(a.out, "w") as f:
        json.dump(res, f)
    open(a.release, "w").close()


# ---------------------------------------------------------------------------------------
# result rows

def append_row(path, row):
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def first_error(text):
    for line in text.splitlines():
        if re.search(r"ERROR|FATAL|aborted|error|could not|failed", line) and \
                not re.match(r"\s*number of failed transactions: 0\b", line):
            return line.strip()[:300]
    return ""


def read_text(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def cmd_pgbench_row(a):
    out = read_text(a.pgbench_out)
    row = {"round": a.round, "method": a.method, "workload": a.workload,
           "clients": a.clients, "status": "ok", "note": ""}
    problems = []
    if a.rc != 0:
        problems.append("pgbench exit status %d" % a.rc)
    m = re.search(r"number of failed transactions: (\d+)", out)
    if m and int(m.group(1)) > 0:
        problems.append("%s failed transactions" % m.group(1))
    if re.search(r"\baborted\b", out):
        problems.append("clients aborted")
    # Per-transaction logs: client_id txn_no latency_us script_no epoch_s epoch_us ...
    ends, lats = [], []
    nfailed_log = 0
    for path in glob.glob(a.log_prefix + ".*"):
        with open(path) as f:
            for line in f:
                p = line.split()
                if len(p) < 6:
                    continue
                try:
                    end = int(p[4]) + int(p[5]) / 1e6
                except ValueError:
                    continue
                try:
                    lat = float(p[2])
                except ValueError:       # "failed" / "skipped"
                    nfailed_log += 1
                    continue
                ends.append(end)
                lats.append(lat)
    if nfailed_log:
        problems.append("%d failed transactions in the log" % nfailed_log)
    if ends:
        log_start = min(e - l / 1e6 for e, l in zip(ends, lats))
        t_start = log_start + a.warmup
        t_end = min(t_start + a.duration, max(ends))
        span = t_end - t_start
        sel = [l for e, l in zip(ends, lats) if t_start <= e <= t_end]
        if span < 0.5 * a.duration or not sel:
            problems.append("measured window too short (%.2f s)" % max(span, 0))
        else:
            sel.sort()
            n = len(sel)
            row["tps"] = round(n / span, 1)
            row["txns"] = n
            row["mean_ms"] = round(sum(sel) / n / 1000.0, 3)
            row["p99_ms"] = round(sel[max(0, math.ceil(0.99 * n) - 1)] / 1000.0, 3)
            row.update(window_stats(load_samples(a.samples), t_start, t_end, a.method))
    elif not problems:
        problems.append("no transactions logged")
    if problems:
        row["status"] = "error"
        err = first_error(out)
        row["note"] = "; ".join(problems) + (": " + err if err else "")
        for k in ("tps", "txns", "mean_ms", "p99_ms"):
            row.pop(k, None)
    append_row(a.raw, row)
    print("    %-34s %-6s c=%-3s %s" % (
        a.method, a.workload, a.clients,
        ("tps=%s mean=%sms p99=%sms f_conns=%s cpu=%s%%" % (
            row.get("tps"), row.get("mean_ms"), row.get("p99_ms"), row.get("f_conns"),
            row.get("cpu_busy_pct"))) if row["status"] == "ok" else "ERROR " + row["note"]))


def cmd_large_row(a):
    out = read_text(a.psql_out)
    err = read_text(a.psql_err)
    row = {"round": a.round, "method": a.method, "workload": "large", "clients": 1,
           "status": "ok", "note": ""}
    problems = []
    if a.rc != 0:
        problems.append("psql exit status %d" % a.rc)
    m = re.search(r"^Time: ([0-9.]+) ms", out, re.M)
    cnt = re.search(r"^(\d+)\s*$", out, re.M)
    if not m:
        problems.append("no timing")
    if not cnt or int(cnt.group(1)) != a.expect:
        problems.append("row count %s, expected %d" % (cnt.group(1) if cnt else "?", a.expect))
    try:
        with open(a.rss) as f:
            rss = json.load(f)
    except (OSError, ValueError):
        rss = None
        problems.append("no memory samples")
    if rss:
        if not rss.get("finished"):
            problems.append("memory sampler timed out")
        be = rss.get("backend", {})
        if be.get("hwm") is not None:
            row["backend_vmhwm_mb"] = round(be["hwm"] / 1024.0, 1)
        if be.get("anon_peak") is not None:
            row["backend_rssanon_peak_mb"] = round(be["anon_peak"] / 1024.0, 1)
        wk = rss.get("worker")
        if wk and wk.get("anon_peak") is not None and wk.get("anon_before") is not None:
            row["worker_rssanon_growth_mb"] = round(
                (wk["anon_peak"] - wk["anon_before"]) / 1024.0, 1)
        row.update(window_stats(load_samples(a.samples), rss.get("t_go", 0),
                                rss.get("t_done", 0), a.method))
    if m:
        row["elapsed_s"] = round(float(m.group(1)) / 1000.0, 3)
    if problems:
        row["status"] = "error"
        e = first_error(err) or first_error(out)
        row["note"] = "; ".join(problems) + (": " + e if e else "")
        row.pop("elapsed_s", None)
    append_row(a.raw, row)
    if row["status"] == "ok":
        msg = "elapsed=%ss backend_hwm=%sMB backend_anon_peak=%sMB" % (
            row.get("elapsed_s"), row.get("backend_vmhwm_mb"), row.get("backend_rssanon_peak_mb"))
        if "worker_rssanon_growth_mb" in row:
            msg += " worker_anon_growth=%sMB" % row["worker_rssanon_growth_mb"]
    else:
        msg = "ERROR " + row["note"]
    print("    %-34s large  %s" % (a.method, msg))


# ---------------------------------------------------------------------------------------
# report

DECIMALS = {"tps": 1, "tps_min": 1, "tps_max": 1, "mean_ms": 3, "p99_ms": 3, "cpu_busy_pct": 1,
            "ratio_vs_dblink_persistent": 2, "ratio_vs_dblink_persistent_via_pgbouncer": 2,
            "elapsed_s": 3, "backend_vmhwm_mb": 1, "backend_rssanon_peak_mb": 1,
            "worker_rssanon_growth_mb": 1}


def fmt(v, col=None):
    if v is None or v == "":
        return ""
    if isinstance(v, (int, float)) and col in DECIMALS:
        return "%.*f" % (DECIMALS[col], v)
    return str(v)


def cmd_report(a):
    runs = []
    with open(a.raw) as f:
        for line in f:
            line = line.strip()
            if line:
                runs.append(json.loads(line))
    # All repeats, as measured.
    run_cols = ["round"] + [c for c in COLUMNS if c not in (
        "runs", "tps_min", "tps_max", "ratio_vs_dblink_persistent",
        "ratio_vs_dblink_persistent_via_pgbouncer")]
    with open(a.runs_csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(run_cols)
        for r in runs:
            w.writerow([r.get(c, "") for c in run_cols])

    groups = {}
    for r in runs:
        groups.setdefault((r["method"], r["workload"], int(r["clients"])), []).append(r)

    rows = []
    for (method, workload, clients), rs in groups.items():
        ok = [r for r in rs if r["status"] == "ok"]
        key = "elapsed_s" if workload == "large" else "tps"
        if ok:
            ok.sort(key=lambda r: r[key])
            med = dict(ok[(len(ok) - 1) // 2])
            if workload != "large":
                med["tps_min"] = ok[0]["tps"]
                med["tps_max"] = ok[-1]["tps"]
            nerr = len(rs) - len(ok)
            notes = [r["note"] for r in rs if r["status"] != "ok"]
            if nerr:
                med["status"] = "partial"
                med["note"] = "%d of %d runs failed: %s" % (nerr, len(rs), notes[0])
        else:
            med = dict(rs[0])
            med["tps"] = "error" if workload != "large" else ""
            if workload == "large":
                med["elapsed_s"] = "error"
        med["runs"] = len(rs)
        med["clients"] = clients
        rows.append(med)

    def ok_value(method, workload, clients, key):
        for r in rows:
            if (r["method"], r["workload"], r["clients"]) == (method, workload, clients):
                v = r.get(key)
                return v if isinstance(v, (int, float)) and v > 0 else None
        return None

    for r in rows:
        for base in BASELINES:
            col = "ratio_vs_" + base
            r[col] = ""
            if r["workload"] == "large":
                # Speed relative to the baseline: baseline elapsed / this elapsed.
                mine = ok_value(r["method"], "large", r["clients"], "elapsed_s")
                theirs = ok_value(base, "large", r["clients"], "elapsed_s")
                if mine and theirs:
                    r[col] = round(theirs / mine, 2)
            else:
                mine = ok_value(r["method"], r["workload"], r["clients"], "tps")
                theirs = ok_value(base, r["workload"], r["clients"], "tps")
                if mine and theirs:
                    r[col] = round(mine / theirs, 2)

    def order(r):
        return (WORKLOAD_ORDER.index(r["workload"]) if r["workload"] in WORKLOAD_ORDER else 9,
                r["clients"],
                METHOD_ORDER.index(r["method"]) if r["method"] in METHOD_ORDER else 99)

    rows.sort(key=order)
    with open(a.csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for r in rows:
            w.writerow([r.get(c, "") for c in COLUMNS])

    # Aligned table: drop columns that are empty everywhere (e.g. RSS without "large").
    shown = [c for c in COLUMNS if c in ("method", "workload", "clients", "tps")
             or any(fmt(r.get(c), c) not in ("", "ok") for r in rows)]
    if all(r.get("runs") == 1 for r in rows):
        shown = [c for c in shown if c not in ("runs", "tps_min", "tps_max")]
    head = [HEADINGS.get(c, c) for c in shown]
    cells = [[fmt(r.get(c), c) for c in shown] for r in rows]
    widths = [max([len(h)] + [len(x[i]) for x in cells]) for i, h in enumerate(head)]
    left = {"method", "workload", "status", "note"}

    def line(vals):
        out = []
        for c, v, wd in zip(shown, vals, widths):
            out.append(v.ljust(wd) if c in left else v.rjust(wd))
        return "  ".join(out).rstrip()

    lines = [line(head), line(["-" * wd for wd in widths])]
    prev = None
    for r, x in zip(rows, cells):
        k = (r["workload"], r["clients"])
        if prev is not None and k != prev:
            lines.append("")
        prev = k
        lines.append(line(x))
    text = "\n".join(lines)
    print(text)
    if a.table:
        with open(a.table, "a") as f:
            f.write(text + "\n")


# ---------------------------------------------------------------------------------------
# scrape

def cmd_scrape(a):
    """GET the metrics endpoint every interval until SIGTERM; then write how many scrapes
    were made, how many failed and the slowest one (JSON) to --out."""
    import signal
    import urllib.request
    stats = {"scrapes": 0, "failures": 0, "max_ms": 0.0, "bytes": 0}
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    interval = a.interval_ms / 1000.0
    nxt = time.monotonic()
    while not stop:
        t0 = time.monotonic()
        try:
            with urllib.request.urlopen(a.url, timeout=5) as r:
                stats["bytes"] = len(r.read())
            stats["scrapes"] += 1
        except Exception:
            stats["failures"] += 1
        stats["max_ms"] = max(stats["max_ms"], round((time.monotonic() - t0) * 1000, 1))
        nxt += interval
        delay = nxt - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            nxt = time.monotonic()
    with open(a.out, "w") as f:
        json.dump(stats, f)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("sample")
    p.add_argument("--out", required=True)
    p.add_argument("--psql", default="psql")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--interval", type=float, default=0.2)

    p = sub.add_parser("rss")
    p.add_argument("--backend", type=int, required=True)
    p.add_argument("--worker", type=int, default=0)
    p.add_argument("--go", required=True)
    p.add_argument("--qdone", required=True)
    p.add_argument("--release", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--interval", type=float, default=0.05)
    p.add_argument("--timeout", type=float, default=3600)

    p = sub.add_parser("pgbench-row")
    for k in ("raw", "method", "workload", "pgbench-out", "log-prefix", "samples"):
        p.add_argument("--" + k, required=True)
    for k in ("round", "clients", "rc"):
        p.add_argument("--" + k, type=int, required=True)
    p.add_argument("--warmup", type=float, required=True)
    p.add_argument("--duration", type=float, required=True)

    p = sub.add_parser("large-row")
    for k in ("raw", "method", "psql-out", "psql-err", "rss", "samples"):
        p.add_argument("--" + k, required=True)
    for k in ("round", "rc", "expect"):
        p.add_argument("--" + k, type=int, required=True)

    p = sub.add_parser("report")
    p.add_argument("--raw", required=True)
    p.add_argument("--csv", required=True)
    p.add_argument("--runs-csv", required=True)
    p.add_argument("--table")

    p = sub.add_parser("scrape")
    p.add_argument("--url", required=True)
    p.add_argument("--interval-ms", type=float, required=True)
    p.add_argument("--out", required=True)

    a = ap.parse_args()
    {"sample": cmd_sample, "rss": cmd_rss, "pgbench-row": cmd_pgbench_row,
     "large-row": cmd_large_row, "report": cmd_report, "scrape": cmd_scrape}[a.cmd](a)


if __name__ == "__main__":
    main()
