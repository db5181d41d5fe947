#!/usr/bin/env python3
"""Helper for bench/run.sh (python3 standard library only).

Subcommands:
  sample      background sampler: every 200 ms, /proc/stat, the dbpool worker's CPU time and
              the client backends on F (grouped by application_name), one line per sample,
              until SIGTERM or EOF
  rss         /proc/PID/status sampler (every 50 ms) around one large-result query
  pgbench-row turn one pgbench run (output, per-transaction logs, samples) into a result row
  large-row   turn one large-result run (psql output, rss result, samples) into a result row
  report      medians over repeats, ratios, the aligned table and the CSV files
  plot        an SVG line chart of TPS by clients, one line per method, from a result CSV
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
    "dbpool_manypools": "dbpool",  # dbpool's point on pool mp001 of MANYPOOLS (manypools)
    "dbpool_manypools_bench": "dbpool",  # dbpool's point on its pool of 8 while those are open
}
# The rows that are dbpool measured another way, compared with dbpool's row (ratio_vs_dbpool).
DBPOOL_VARIANTS = ["dbpool_scraped", "dbpool_manypools", "dbpool_manypools_bench"]
METHOD_ORDER = list(METHOD_GROUP)
WORKLOAD_ORDER = ["point", "slow", "large"]
BASELINES = ["dblink_persistent", "dblink_persistent_via_pgbouncer"]

COLUMNS = [
    "method", "workload", "clients", "runs", "tps", "tps_min", "tps_max", "mean_ms", "p99_ms",
    "txns", "f_conns", "f_conns_all", "cpu_busy_pct", "wk_us_per_q", "ratio_vs_dblink_persistent",
    "ratio_vs_dblink_persistent_via_pgbouncer", "ratio_vs_dbpool", "elapsed_s", "backend_vmhwm_mb",
    "backend_rssanon_peak_mb", "worker_rssanon_growth_mb", "status", "note",
]
# Short headings for the printed table.
HEADINGS = {
    "clients": "cli", "tps_min": "tps_min", "tps_max": "tps_max",
    "ratio_vs_dblink_persistent": "vs_dbl_pers",
    "ratio_vs_dblink_persistent_via_pgbouncer": "vs_dbl_pers_pgb",
    "cpu_busy_pct": "cpu%", "backend_vmhwm_mb": "be_hwm_mb",
    "backend_rssanon_peak_mb": "be_anon_mb", "worker_rssanon_growth_mb": "wk_anon+mb",
    "f_conns_all": "f_all", "wk_us_per_q": "wk_us/q", "ratio_vs_dbpool": "vs_dbpool",
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


def worker_cpu_ns(pid):
    """CPU time (user + system, ns) of the process's live threads, from
    /proc/PID/task/*/schedstat; from /proc/PID/stat (clock ticks) where schedstat is missing.
    -1 when the process is gone or not given."""
    if not pid:
        return -1
    total, seen = 0, False
    for path in glob.glob("/proc/%d/task/*/schedstat" % pid):
        try:
            with open(path) as f:
                total += int(f.read().split()[0])
            seen = True
        except (OSError, ValueError, IndexError):
            pass
    if seen:
        return total
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # after the command: state is field 3, utime 14 and stime 15
        ticks = int(fields[11]) + int(fields[12])
        return ticks * 1000000000 // os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return -1


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
        out.write("# t busy total worker_ns all %s\n" % " ".join(GROUPS))
        buf = b""
        while True:
            t0 = time.time()
            busy, total = read_cpu()
            wk = worker_cpu_ns(a.worker)
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
                out.write("%.3f %d %d %d %s\n" % (t0, busy, total, wk, line.decode().strip()))
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
            if len(p) != 5 + len(GROUPS):
                continue
            try:
                t = float(p[0])
                busy, total, wk = int(p[1]), int(p[2]), int(p[3])
                counts = [int(x) for x in p[4:]]
            except ValueError:
                continue
            rows.append((t, busy, total, counts[0], dict(zip(GROUPS, counts[1:])), wk))
    return rows


def window_stats(samples, t_start, t_end, method):
    """Peak connections of the method's group and of all client backends on F, the machine's
    CPU busy percentage and the dbpool worker's CPU seconds per second (wk_cpu_rate), from the
    samples taken inside [t_start, t_end]."""
    inside = [s for s in samples if t_start <= s[0] <= t_end]
    res = {"f_conns": "", "f_conns_all": "", "cpu_busy_pct": "", "wk_cpu_rate": ""}
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
        wall = last[0] - first[0]
        if first[5] >= 0 and last[5] >= first[5] and wall > 0:
            res["wk_cpu_rate"] = (last[5] - first[5]) / 1e9 / wall
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
            rate = row.pop("wk_cpu_rate", "")
            if a.method.startswith("dbpool") and rate != "" and row["tps"] > 0:
                row["wk_us_per_q"] = round(rate * 1e6 / row["tps"], 1)
    elif not problems:
        problems.append("no transactions logged")
    if problems:
        row["status"] = "error"
        err = first_error(out)
        row["note"] = "; ".join(problems) + (": " + err if err else "")
        for k in ("tps", "txns", "mean_ms", "p99_ms"):
            row.pop(k, None)
    append_row(a.raw, row)
    msg = "ERROR " + row["note"]
    if row["status"] == "ok":
        msg = "tps=%s mean=%sms p99=%sms f_conns=%s cpu=%s%%" % (
            row.get("tps"), row.get("mean_ms"), row.get("p99_ms"), row.get("f_conns"),
            row.get("cpu_busy_pct"))
        if row.get("wk_us_per_q", "") != "":
            msg += " worker=%sus/q" % row["wk_us_per_q"]
    print("    %-34s %-6s c=%-3s %s" % (a.method, a.workload, a.clients, msg))


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
        row.pop("wk_cpu_rate", None)
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
            "ratio_vs_dbpool": 2, "wk_us_per_q": 1, "elapsed_s": 3, "backend_vmhwm_mb": 1, "backend_rssanon_peak_mb": 1,
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
        "ratio_vs_dblink_persistent_via_pgbouncer", "ratio_vs_dbpool")]
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
        # dbpool measured another way, against dbpool's own row in the same run.
        r["ratio_vs_dbpool"] = ""
        if r["method"] in DBPOOL_VARIANTS and r["workload"] != "large":
            mine = ok_value(r["method"], r["workload"], r["clients"], "tps")
            theirs = ok_value("dbpool", r["workload"], r["clients"], "tps")
            if mine and theirs:
                r["ratio_vs_dbpool"] = round(mine / theirs, 2)

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
    # One line per dbpool variant: its TPS against dbpool's in the same run, and the worker's
    # CPU time per query in both.
    for variant, mine_name, base_name in (("dbpool_manypools", "manypools", "point"),
                                          ("dbpool_scraped", "dbpool_scraped", "dbpool")):
        parts, wk = [], []
        for r in rows:
            if r["method"] != variant or r["workload"] == "large":
                continue
            cl = "%d client%s" % (r["clients"], "" if r["clients"] == 1 else "s")
            if r["workload"] != "point":
                cl = "%s %s" % (r["workload"], cl)
            if r["ratio_vs_dbpool"] != "":
                parts.append("%.2f at %s" % (r["ratio_vs_dbpool"], cl))
            base = [b for b in rows if (b["method"], b["workload"], b["clients"]) ==
                    ("dbpool", r["workload"], r["clients"])]
            mine = r.get("wk_us_per_q", "")
            theirs = base[0].get("wk_us_per_q", "") if base else ""
            if mine != "" and theirs != "":
                wk.append("%s / %s at %s" % (fmt(mine, "wk_us_per_q"),
                                             fmt(theirs, "wk_us_per_q"), cl))
        if parts or wk:
            lines.append("")
        if parts:
            lines.append("%s vs %s (TPS): %s" % (mine_name, base_name, ", ".join(parts)))
        if wk:
            lines.append("the dbpool worker's CPU per query, %s / %s (us): %s" % (
                mine_name, base_name, ", ".join(wk)))
    # manypools against the pool of 8 measured while the same connections are open: what the
    # busy pool being one of many costs, apart from what the open connections cost F
    same = []
    for r in rows:
        if r["method"] != "dbpool_manypools" or r["workload"] != "point":
            continue
        b = [x for x in rows if (x["method"], x["workload"], x["clients"]) ==
             ("dbpool_manypools_bench", "point", r["clients"])]
        if b and b[0].get("tps") not in ("", None, "error") and r.get("tps") not in ("", None, "error") \
                and float(b[0]["tps"]) > 0:
            same.append("%.2f at %d client%s" % (float(r["tps"]) / float(b[0]["tps"]), r["clients"],
                                                 "" if r["clients"] == 1 else "s"))
    if same:
        lines.append("manypools vs the pool of 8 with the same connections open (TPS): %s" % ", ".join(same))
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


# ---------------------------------------------------------------------------------------
# plot

# Okabe-Ito colours (told apart with most colour vision), one marker shape per method.
PLOT_COLORS = ["#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7", "#000000",
               "#999999", "#882255"]
PLOT_MARKERS = ["circle", "square", "triangle", "diamond", "down", "circle", "square",
                "triangle", "diamond"]
PLOT_STYLE = {   # method -> (colour, marker, dash, width); others take the next free colour
    "direct": ("#009E73", "down", "", 2.0),
    "dblink_oneshot": ("#882255", "triangle", "", 2.0),
    "dblink_via_pgbouncer": ("#999999", "diamond", "", 2.0),
    "postgres_fdw": ("#000000", "circle", "", 1.5),
    "dbpool": ("#D55E00", "circle", "", 3.0),
    "dbpool_manypools": ("#D55E00", "diamond", "7 4", 2.0),
    "dbpool_manypools_bench": ("#E69F00", "square", "2 3", 1.5),
    "dbpool_scraped": ("#CC79A7", "square", "3 3", 2.0),
    "dblink_persistent": ("#0072B2", "square", "", 2.0),
    "dblink_persistent_via_pgbouncer": ("#56B4E9", "triangle", "", 2.0),
}


def nice_step(span, ticks=5):
    """A round step (1, 2 or 5 times a power of ten) giving about `ticks` intervals."""
    if span <= 0:
        return 1.0
    raw = span / ticks
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def fmt_tps(v):
    """8000 -> '8 000' (a thin space groups thousands, as in the docs' tables)."""
    if v == int(v):
        txt = "{:,}".format(int(v))
    else:
        txt = "{:,.1f}".format(v)
    return txt.replace(",", "\u2009")


def svg_marker(shape, x, y, r, colour):
    if shape == "square":
        return '<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"/>' % (
            x - r, y - r, 2 * r, 2 * r, colour)
    if shape in ("triangle", "down"):
        d = 1 if shape == "triangle" else -1
        pts = [(x, y - d * r * 1.2), (x - r * 1.1, y + d * r * 0.8), (x + r * 1.1, y + d * r * 0.8)]
    elif shape == "diamond":
        pts = [(x, y - r * 1.3), (x + r * 1.1, y), (x, y + r * 1.3), (x - r * 1.1, y)]
    else:
        return '<circle cx="%.1f" cy="%.1f" r="%.1f" fill="%s"/>' % (x, y, r, colour)
    return '<polygon points="%s" fill="%s"/>' % (
        " ".join("%.1f,%.1f" % p for p in pts), colour)


def cmd_plot(a):
    """Line chart of TPS by clients (log2 x axis when the counts span a factor 4 or more), one
    line and marker shape per method, the min-max range over the rounds as an error bar, and a
    legend; hand-written SVG, standard library only."""
    from xml.sax.saxutils import escape
    series = {}
    with open(a.csv, newline="") as f:
        for r in csv.DictReader(f):
            if r.get("workload") != a.workload:
                continue
            try:
                c, tps = int(r["clients"]), float(r["tps"])
            except (KeyError, ValueError):
                continue        # failed rows ("error") are left out
            lo = hi = tps
            try:
                lo, hi = float(r.get("tps_min") or tps), float(r.get("tps_max") or tps)
            except ValueError:
                pass
            series.setdefault(r["method"], []).append((c, tps, lo, hi))
    if not series:
        sys.exit("plot: no %s rows with a TPS in %s" % (a.workload, a.csv))
    methods = sorted(series, key=lambda m: (METHOD_ORDER.index(m) if m in METHOD_ORDER else 99, m))
    clients = sorted({p[0] for m in methods for p in series[m]})
    ymax_data = max(p[3] for m in methods for p in series[m])

    # the legend, right of the plot, is as wide as the longest method name (about 7.5 px a
    # character at 13 px)
    left, top, bottom, pw, ph = 86, 70, 62, 470, 350
    W = int(left + pw + 24 + 38 + 7.5 * max(len(m) for m in methods) + 16)
    H = top + ph + bottom
    logx = clients[0] > 0 and clients[-1] / clients[0] >= 4
    if logx:
        x0, x1 = math.log2(clients[0]), math.log2(clients[-1])
    else:
        x0, x1 = min(0, clients[0]), clients[-1]
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    pad = 0.06 * (x1 - x0)
    x0, x1 = x0 - pad, x1 + pad
    step = nice_step(ymax_data * 1.05)
    ymax = step * math.ceil(ymax_data * 1.05 / step)

    def X(c):
        v = math.log2(c) if logx else c
        return left + (v - x0) / (x1 - x0) * pw

    def Y(v):
        return top + ph - v / ymax * ph

    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           '<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" '
           'font-family="Helvetica, Arial, sans-serif" font-size="13">' % (W, H, W, H)]
    title = "dbpool benchmark: %s workload, TPS by clients" % a.workload
    sub = a.subtitle if a.subtitle is not None else \
        re.sub(r"\.csv$", "", os.path.basename(a.csv))
    out.append("<title>%s</title>" % escape(title + (" (" + sub + ")" if sub else "")))
    out.append('<rect x="0" y="0" width="%d" height="%d" fill="#ffffff"/>' % (W, H))
    out.append('<text x="%d" y="26" font-size="17" font-weight="bold" fill="#222">%s</text>'
               % (left, escape(title)))
    if sub:
        out.append('<text x="%d" y="46" font-size="12" fill="#555">%s</text>'
                   % (left, escape(sub)))
    # grid and y ticks
    v = 0.0
    while v <= ymax + step / 2:
        y = Y(v)
        out.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="%s" stroke-width="1"/>'
                   % (left, y, left + pw, y, "#888" if v == 0 else "#e3e3e3"))
        out.append('<text x="%d" y="%.1f" text-anchor="end" fill="#333">%s</text>'
                   % (left - 8, y + 4, fmt_tps(v)))
        v += step
    # x ticks at the measured client counts
    for c in clients:
        x = X(c)
        out.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#e3e3e3" stroke-width="1"/>'
                   % (x, top, x, top + ph))
        out.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#888" stroke-width="1"/>'
                   % (x, top + ph, x, top + ph + 5))
        out.append('<text x="%.1f" y="%d" text-anchor="middle" fill="#333">%d</text>'
                   % (x, top + ph + 20, c))
    out.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#888" stroke-width="1"/>'
               % (left, top, left, top + ph))
    out.append('<text x="%.1f" y="%d" text-anchor="middle" fill="#222">clients%s</text>'
               % (left + pw / 2, H - 16, " (log\u2082 scale)" if logx else ""))
    out.append('<text transform="translate(22 %.1f) rotate(-90)" text-anchor="middle" '
               'fill="#222">transactions per second</text>' % (top + ph / 2))
    # one line per method
    spare = [c for c in PLOT_COLORS if c not in {s[0] for s in PLOT_STYLE.values()}]
    legend = []
    for i, m in enumerate(methods):
        colour, marker, dash, width = PLOT_STYLE.get(m) or (
            spare[i % len(spare)], PLOT_MARKERS[i % len(PLOT_MARKERS)], "", 2.0)
        pts = sorted(series[m])
        out.append('<g>')
        for c, tps, lo, hi in pts:
            if hi > lo:
                out.append('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" '
                           'stroke-width="1.5" opacity="0.7"/>' % (X(c), Y(lo), X(c), Y(hi), colour))
        if len(pts) > 1:
            out.append('<polyline points="%s" fill="none" stroke="%s" stroke-width="%.1f"%s '
                       'stroke-linejoin="round"/>' % (
                           " ".join("%.1f,%.1f" % (X(c), Y(t)) for c, t, _, _ in pts), colour,
                           width, ' stroke-dasharray="%s"' % dash if dash else ""))
        for c, tps, _, _ in pts:
            out.append(svg_marker(marker, X(c), Y(tps), 4.5, colour))
            out.append('<title>%s, %d clients: %s TPS</title>' % (escape(m), c, fmt_tps(tps)))
        out.append('</g>')
        legend.append((m, colour, marker, dash, width))
    # legend, right of the plot
    lx, ly = left + pw + 24, top + 8
    for k, (m, colour, marker, dash, width) in enumerate(legend):
        y = ly + k * 24
        out.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="%.1f"%s/>'
                   % (lx, y, lx + 30, y, colour, width,
                      ' stroke-dasharray="%s"' % dash if dash else ""))
        out.append(svg_marker(marker, lx + 15, y, 4.5, colour))
        out.append('<text x="%d" y="%d" fill="#222">%s</text>' % (lx + 38, y + 4, escape(m)))
    if any(p[3] > p[2] for m in methods for p in series[m]):
        y = ly + len(legend) * 24 + 8
        out.append('<text x="%d" y="%d" font-size="11" fill="#555">bars: lowest to highest '
                   'round</text>' % (lx, y))
    out.append("</svg>")
    with open(a.svg, "w", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("sample")
    p.add_argument("--out", required=True)
    p.add_argument("--psql", default="psql")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--interval", type=float, default=0.2)
    p.add_argument("--worker", type=int, default=0, help="pid of the dbpool worker")

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

    p = sub.add_parser("plot", help="SVG chart of TPS by clients from a result CSV")
    p.add_argument("csv")
    p.add_argument("svg")
    p.add_argument("--workload", default="point")
    p.add_argument("--subtitle", default=None,
                   help="second title line (default: the CSV's timestamp)")

    a = ap.parse_args()
    {"sample": cmd_sample, "rss": cmd_rss, "pgbench-row": cmd_pgbench_row,
     "large-row": cmd_large_row, "report": cmd_report, "scrape": cmd_scrape,
     "plot": cmd_plot}[a.cmd](a)


if __name__ == "__main__":
    main()
