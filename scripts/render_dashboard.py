"""Render deploy/monitoring/grafana-dashboard.json, filled with real data, into docs/dashboard.png.

    python3 -m venv /tmp/render-venv && /tmp/render-venv/bin/pip install matplotlib httpx
    /tmp/render-venv/bin/python scripts/render_dashboard.py  # [--seconds 240] [--out PATH]

matplotlib is not a dependency of the project, hence the throwaway venv above (this script
needs only the standard library, matplotlib and httpx). It needs, as scripts/test.sh does,
Debian's `prometheus` and `redis-server` on PATH, a Docker engine with `busybox:latest`, and
the project's `.venv` (`bash scripts/setup.sh`), whose `dockguard` it runs.

No Grafana is involved. Everything listens on 127.0.0.1 only, and stops at the end:
- a private redis-server, and `dockguard serve` (API + in-process worker, 2 jobs at a time) with
  offline settings: an empty vulnerability DB written by tests/trivydb.py (no refresh),
  `DOCKGUARD_BUILD_NETWORK=none`, `DOCKGUARD_RUN_TIMEOUT_S=3`;
- a private Prometheus scraping that API's /metrics every second;
- a few minutes of synthetic traffic through the API: new Dockerfiles that succeed, repeated ones
  (scan cache hits), failing builds, runs that time out, exit non-zero, write no result or are
  OOM-killed, Dockerfiles the scan rejects or the submission policy refuses, cancellations, two
  bursts that fill the queue, and the polls of a client waiting for its jobs.
Then each panel's PromQL (`targets[].expr`) is evaluated over the traffic window through
Prometheus's HTTP API and drawn where the panel's `gridPos` puts it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch
from matplotlib.ticker import FuncFormatter, MaxNLocator

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from tests.trivydb import write_db  # noqa: E402 -- the test suite's DB writer (standard library)

DASHBOARD = REPO / "deploy" / "monitoring" / "grafana-dashboard.json"
DOCKGUARD = REPO / ".venv" / "bin" / "dockguard"
TERMINAL = {"succeeded", "failed", "rejected", "cancelled"}
STEP_S = 5
RUN_TIMEOUT_S = 3
CONCURRENCY = 2

# Grafana's look (dark theme) and its classic palette.
BG, PANEL_BG, BORDER = "#111217", "#181b1f", "#2a2d33"
TEXT, MUTED, GRID = "#ccccdc", "#8e8e9e", "#2c3038"
PALETTE = (
    "#73bf69",
    "#f2cc0c",
    "#5794f2",
    "#ff9830",
    "#f2495c",
    "#b877d9",
    "#8ab8ff",
    "#fade2a",
    "#37872d",
    "#e0b400",
    "#1f60c4",
    "#c4162a",
)

SUCCEEDS = 'CMD ["sh", "-c", "echo \'{{\\"perf\\": {perf}}}\' > /data/perf.json"]'


def dockerfile(kind: str, nonce: str) -> tuple[str, dict[str, Any] | None]:
    """The Dockerfile of one kind of submission, and the run limits it asks for."""
    head = f"FROM busybox:latest\n# {nonce}\n"
    perf = f"0.{int(uuid.UUID(nonce).int % 90) + 10}" if len(nonce) == 32 else "0.5"
    body = {
        "new": "USER 1000\n" + SUCCEEDS.format(perf=perf) + "\n",
        "build_fail": "USER 1000\nRUN exit 3\n",
        "timeout": 'USER 1000\nCMD ["sleep", "60"]\n',
        "cancel": 'USER 1000\nCMD ["sleep", "60"]\n',
        "scan_reject": SUCCEEDS.format(perf=perf) + "\n",  # no USER: root (Trivy DS-0002, HIGH)
        "policy": "USER 1000\nADD https://example.invalid/x /x\n",  # remote ADD: refused, 400
        "nonzero": 'USER 1000\nCMD ["sh", "-c", "exit 2"]\n',
        "no_result": 'USER 1000\nCMD ["true"]\n',
        "oom": 'USER 1000\nCMD ["sh", "-c", "head -c 200000000 /dev/zero | tail"]\n',
    }
    if kind == "repeat":
        return dockerfile("new", "repeated")[0], None
    limits = {"run_memory_mb": 16} if kind == "oom" else None
    return head + body[kind], limits


# One cycle of the steady mix (repeated Dockerfiles are scan cache hits after the first).
MIX = (
    "new",
    "repeat",
    "build_fail",
    "new",
    "timeout",
    "repeat",
    "scan_reject",
    "new",
    "policy",
    "nonzero",
    "repeat",
    "new",
    "cancel",
    "oom",
    "new",
    "no_result",
    "repeat",
    "build_fail",
)
BURST_MIX = ("new", "repeat", "new", "repeat", "new", "build_fail", "timeout")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def process(name: str, args: list[str], workdir: Path, **kwargs: Any) -> Iterator[Path]:
    """Start a process (its output to <workdir>/<name>.log); SIGTERM it, then SIGKILL, at exit."""
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, **kwargs)
    try:
        yield log
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_ready(url: str, log: Path, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:]
    raise SystemExit(f"{what} did not become ready at {url}; its log ends:\n{tail}")


# --- Traffic ---------------------------------------------------------------------------------


@dataclass
class Open:
    kind: str
    job_id: str
    submitted: float
    cancel_at: float | None = None


@dataclass
class Traffic:
    started: float = 0.0
    ended: float = 0.0
    submitted: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)  # "kind -> status/code"
    requests: int = 0


def generate_traffic(api: httpx.Client, seconds: float, job_ids: set[str]) -> Traffic:
    """Submit the mix (two bursts included), poll every open job, drain the queue."""
    traffic = Traffic(started=time.time())
    steady, bursts = itertools.cycle(MIX), itertools.cycle(BURST_MIX)
    open_jobs: dict[str, Open] = {}
    begin = time.monotonic()
    next_submit = last_extra = begin

    def request(method: str, url: str, **kwargs: Any) -> httpx.Response:
        traffic.requests += 1
        return api.request(method, url, **kwargs)

    def poll() -> None:
        now = time.monotonic()
        for job in list(open_jobs.values()):
            if job.cancel_at is not None and now >= job.cancel_at:
                request("DELETE", f"/v1/jobs/{job.job_id}")
                job.cancel_at = None
            state = request("GET", f"/v1/jobs/{job.job_id}").json()
            if state["status"] in TERMINAL:
                code = (state.get("error") or {}).get("code") or "-"
                traffic.outcomes[f"{job.kind} -> {state['status']}/{code}"] += 1
                del open_jobs[job.job_id]

    while (elapsed := time.monotonic() - begin) < seconds:
        share = elapsed / seconds
        burst = 0.30 <= share < 0.36 or 0.68 <= share < 0.73
        limit, gap = (8, 0.3) if burst else (CONCURRENCY, 2.5)
        now = time.monotonic()
        if now >= next_submit and len(open_jobs) < limit:
            kind = next(bursts if burst else steady)
            text, limits = dockerfile(kind, uuid.uuid4().hex)
            traffic.submitted[kind] += 1
            if limits is None:
                headers = {"Content-Type": "text/plain"}
                response = request("POST", "/v1/jobs", content=text, headers=headers)
            else:
                body = {"dockerfile": text, "limits": limits}
                response = request("POST", "/v1/jobs", json=body)
            if response.status_code == 202:
                job_id = response.json()["id"]
                cancel_at = now + 4 if kind == "cancel" else None
                open_jobs[job_id] = Open(kind, job_id, now, cancel_at)
                job_ids.add(job_id)
            else:
                code = response.json().get("code", "?")
                traffic.outcomes[f"{kind} -> HTTP {response.status_code}/{code}"] += 1
            next_submit = now + gap
        if now - last_extra >= 10:  # what else a client and an operator ask
            last_extra = now
            request("GET", "/v1/jobs", params={"limit": 20})
            request("GET", "/v1/scanner")
            request("GET", f"/v1/jobs/{uuid.uuid4().hex}")  # 404
            if open_jobs:  # a long-poll: answered when the job ends, or after 2 s
                request("GET", f"/v1/jobs/{next(iter(open_jobs))}", params={"wait": 2})
        poll()
        time.sleep(0.5)
    drain_until = time.monotonic() + 120
    while open_jobs and time.monotonic() < drain_until:
        poll()
        time.sleep(0.5)
    for job in open_jobs.values():
        traffic.outcomes[f"{job.kind} -> still open at the end"] += 1
    traffic.ended = time.time()
    return traffic


# --- Queries ---------------------------------------------------------------------------------


def promql(expr: str, range_s: float) -> str:
    """Grafana's variables replaced as Grafana would for this range and a 5 s step."""
    for name, value in (
        ("$__rate_interval", "30s"),
        ("${__rate_interval}", "30s"),
        ("$__interval_ms", str(STEP_S * 1000)),
        ("$__interval", f"{STEP_S}s"),
        ("${__interval}", f"{STEP_S}s"),
        ("$__range_s", str(int(range_s))),
        ("$__range", f"{int(range_s)}s"),
        ("${__range}", f"{int(range_s)}s"),
    ):
        expr = expr.replace(name, value)
    return expr


def date_number(unix_s: float) -> float:
    return unix_s / 86400  # matplotlib's date epoch is 1970-01-01 UTC


@dataclass
class Series:
    label: str
    times: list[float]  # matplotlib date numbers (days since 1970, UTC)
    values: list[float]


@dataclass
class Result:
    series: list[Series] = field(default_factory=list)
    error: str | None = None


def legend(template: str, metric: dict[str, str]) -> str:
    if not template:
        inner = ", ".join(f'{k}="{v}"' for k, v in sorted(metric.items()) if k != "__name__")
        return f"{metric.get('__name__', '')}{{{inner}}}"
    return re.sub(r"\{\{\s*([\w]+)\s*\}\}", lambda m: metric.get(m[1], ""), template)


def query_range(prom: httpx.Client, target: dict[str, Any], start: float, end: float) -> Result:
    expr = promql(target["expr"], end - start)
    params: dict[str, str | float] = {"query": expr, "start": start, "end": end, "step": STEP_S}
    answer = prom.get("/api/v1/query_range", params=params).json()
    if answer.get("status") != "success":
        return Result(error=str(answer.get("error", answer))[:200])
    result = Result()
    for item in answer["data"]["result"]:
        times = [date_number(float(t)) for t, _ in item["values"]]
        values = [float(v) for _, v in item["values"]]
        result.series.append(
            Series(legend(target.get("legendFormat", ""), item["metric"]), times, values)
        )
    result.series.sort(key=lambda s: s.label)
    return result


def query_instant(prom: httpx.Client, target: dict[str, Any], at: float, range_s: float) -> Result:
    answer = prom.get(
        "/api/v1/query", params={"query": promql(target["expr"], range_s), "time": at}
    ).json()
    if answer.get("status") != "success":
        return Result(error=str(answer.get("error", answer))[:200])
    result = Result()
    for item in answer["data"]["result"]:
        stamp, value = item["value"]
        label = legend(target.get("legendFormat", ""), item["metric"])
        result.series.append(Series(label, [date_number(float(stamp))], [float(value)]))
    return result


# --- Drawing ---------------------------------------------------------------------------------


def fmt_value(value: float, unit: str) -> str:
    if math.isnan(value):
        return "NaN"
    if unit == "s":
        magnitude = abs(value)
        if magnitude == 0:
            return "0 s"
        if magnitude < 1:
            return f"{value * 1000:.3g} ms"
        if magnitude < 60:
            return f"{value:.3g} s"
        if magnitude < 3600:
            return f"{value / 60:.3g} min"
        if magnitude < 86400:
            return f"{value / 3600:.3g} hour"
        return f"{value / 86400:.3g} day"
    suffix = " req/s" if unit == "reqps" else ""
    if abs(value) >= 1000:
        return f"{value / 1000:.3g}K{suffix}"
    return f"{value:.3g}{suffix}"


def panel_box(fig: Figure, rect: tuple[float, float, float, float]) -> None:
    x, y, w, h = rect
    fig.add_artist(
        FancyBboxPatch(
            (x, y),
            w,
            h,
            boxstyle="round,pad=0,rounding_size=0.002",
            transform=fig.transFigure,
            facecolor=PANEL_BG,
            edgecolor=BORDER,
            linewidth=0.8,
            zorder=-1,
        )
    )


def no_data(fig: Figure, rect: tuple[float, float, float, float], text: str = "No data") -> None:
    x, y, w, h = rect
    fig.text(x + w / 2, y + h / 2, text, ha="center", va="center", color=MUTED, fontsize=13)


def style_axes(ax: Axes, unit: str) -> None:
    ax.set_facecolor(PANEL_BG)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.tick_params(colors=MUTED, labelsize=8, length=0)
    ax.grid(True, color=GRID, linewidth=0.6)
    ax.yaxis.set_major_locator(MaxNLocator(5))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt_value(v, unit)))
    ax.xaxis.set_major_locator(mdates.MinuteLocator())  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=UTC))  # type: ignore[no-untyped-call]


def draw_timeseries(
    fig: Figure,
    rect: tuple[float, float, float, float],
    results: list[Result],
    unit: str,
    span: tuple[float, float],
) -> None:
    x, y, w, h = rect
    series = [s for r in results for s in r.series if any(not math.isnan(v) for v in s.values)]
    errors = [r.error for r in results if r.error]
    if errors:
        no_data(fig, rect, "Query error: " + errors[0])
        return
    if not series:
        no_data(fig, rect)
        return
    rows = math.ceil(len(series) / 4)
    legend_h = 0.012 * rows + 0.006
    ax = fig.add_axes((x + 0.045, y + legend_h + 0.018, w - 0.055, h - legend_h - 0.055))
    style_axes(ax, unit)
    top = 0.0
    for number, item in enumerate(series):
        colour = PALETTE[number % len(PALETTE)]
        values = [math.nan if math.isinf(v) else v for v in item.values]
        top = max([top, *(v for v in values if not math.isnan(v))])
        ax.plot(item.times, values, color=colour, linewidth=1.3, label=item.label)
        ax.fill_between(item.times, values, color=colour, alpha=0.08, linewidth=0)
    ax.set_xlim(*span)
    ax.set_ylim(0, top * 1.15 if top > 0 else 1)
    if top == 0:  # say it, rather than leave a flat line at 0 to be read
        ax.text(
            0.5, 0.5, "every series is 0 in this window", transform=ax.transAxes,
            ha="center", va="center", color=MUTED, fontsize=11,
        )  # fmt: skip
    ax.legend(
        loc="upper left",
        bbox_to_anchor=(0, -0.09),
        ncol=min(len(series), 4),
        frameon=False,
        fontsize=8,
        labelcolor=TEXT,
        handlelength=1.2,
        columnspacing=1.6,
        borderaxespad=0,
    )


def draw_stat(
    fig: Figure,
    rect: tuple[float, float, float, float],
    now: Result,
    history: Result,
    unit: str,
    span: tuple[float, float],
) -> None:
    x, y, w, h = rect
    if now.error or not now.series:
        no_data(fig, rect, "Query error: " + now.error if now.error else "No data")
        return
    value = now.series[0].values[0]
    colour = PALETTE[0]
    if history.series and len(history.series[0].times) > 1:  # the sparkline below the number
        ax = fig.add_axes((x + 0.004, y + 0.004, w - 0.008, h * 0.36))
        ax.set_axis_off()
        item = history.series[0]
        ax.fill_between(item.times, item.values, color=colour, alpha=0.18, linewidth=0)
        ax.plot(item.times, item.values, color=colour, linewidth=1.2)
        ax.set_xlim(*span)
        low = min(0.0, *item.values)
        ax.set_ylim(low, max(item.values) * 1.1 if max(item.values) > low else low + 1)
        peak = max(item.values)
        fig.text(
            x + w - 0.006,
            y + h - 0.024,
            f"max in window: {fmt_value(peak, unit)}",
            ha="right",
            va="center",
            color=MUTED,
            fontsize=8,
        )
    fig.text(
        x + w / 2,
        y + h * 0.56,
        fmt_value(value, unit),
        ha="center",
        va="center",
        color=colour,
        fontsize=28,
        fontweight="bold",
    )


def render(
    dashboard: dict[str, Any], prom: httpx.Client, traffic: Traffic, out: Path, notes: list[str]
) -> list[str]:
    """Draw every panel; return one line per panel saying what it showed."""
    start, end = traffic.started - 15, traffic.ended + 15
    span = (date_number(start), date_number(end))
    panels = dashboard["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    width_in, unit_in, header_in = 16.0, 0.33, 1.15
    height_in = header_in + rows * unit_in + 0.35
    fig = plt.figure(figsize=(width_in, height_in), dpi=100, facecolor=BG)
    pad_x, gap = 0.008, 0.004
    summary = []

    def rect(grid: dict[str, int]) -> tuple[float, float, float, float]:
        usable = 1 - 2 * pad_x
        left = pad_x + grid["x"] / 24 * usable + gap / 2
        width = grid["w"] / 24 * usable - gap
        top_in = header_in + grid["y"] * unit_in
        height = grid["h"] * unit_in / height_in - gap * width_in / height_in
        return left, 1 - top_in / height_in - height, width, height

    fig.text(
        pad_x,
        1 - 0.3 / height_in,
        f"{dashboard['title']} — Grafana dashboard, with real data",
        color=TEXT,
        fontsize=17,
        fontweight="bold",
        va="center",
    )
    fig.text(
        pad_x,
        1 - 0.62 / height_in,
        "Rendered by scripts/render_dashboard.py from the queries in "
        "deploy/monitoring/grafana-dashboard.json, evaluated against a live Prometheus "
        "(1 s scrapes) — not a Grafana screenshot.",
        color=TEXT,
        fontsize=10.5,
        va="center",
    )
    fig.text(pad_x, 1 - 0.88 / height_in, "  ".join(notes), color=MUTED, fontsize=8.5, va="center")
    for panel in panels:
        grid, unit = (
            panel["gridPos"],
            panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short"),
        )
        box = rect(grid)
        panel_box(fig, box)
        x, y, _, h = box
        fig.text(
            x + 0.006,
            y + h - 0.024,
            panel["title"],
            color=TEXT,
            fontsize=10,
            fontweight="bold",
            va="center",
        )
        targets = panel.get("targets", [])
        if panel["type"] in ("stat", "gauge"):
            now = query_instant(prom, targets[0], end, end - start)
            history = query_range(prom, targets[0], start, end)
            draw_stat(fig, box, now, history, unit, span)
            shown = fmt_value(now.series[0].values[0], unit) if now.series else "no data"
            summary.append(f"{panel['title']}: {shown} (last)")
        else:
            results = [query_range(prom, target, start, end) for target in targets]
            draw_timeseries(fig, box, results, unit, span)
            parts = []
            for target, result in zip(targets, results, strict=True):
                if result.error:
                    parts.append(f"{target['refId']}: error {result.error}")
                    continue
                for item in result.series:
                    finite = [v for v in item.values if math.isfinite(v)]
                    peak = fmt_value(max(finite), unit) if finite else "all NaN"
                    parts.append(f"{item.label or '(no label)'} max {peak}")
                if not result.series:
                    parts.append(f"{target['refId']}: no series")
            summary.append(f"{panel['title']}: " + "; ".join(parts))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, facecolor=BG, dpi=100)
    plt.close(fig)
    return summary


# --- Main ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=240, help="how long traffic runs")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "dashboard.png")
    args = parser.parse_args()
    for binary in ("prometheus", "redis-server", "docker"):
        if shutil.which(binary) is None:
            raise SystemExit(f"render_dashboard: `{binary}` is not on PATH")
    if not DOCKGUARD.exists():
        raise SystemExit(f"render_dashboard: no {DOCKGUARD}; run `bash scripts/setup.sh` first")
    dashboard = json.loads(DASHBOARD.read_text())
    workdir = Path(tempfile.mkdtemp(prefix="dockguard-render-"))
    job_ids: set[str] = set()
    try:
        with ExitStack() as stack:
            redis_port, api_port, prom_port = free_port(), free_port(), free_port()
            (workdir / "redis").mkdir()
            stack.enter_context(
                process(
                    "redis",
                    [
                        "redis-server",
                        "--bind",
                        "127.0.0.1",
                        "--port",
                        str(redis_port),
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                        str(workdir / "redis"),
                    ],
                    workdir,
                )
            )
            db = workdir / "trivy"
            write_db(db, [], updated_at=datetime.now(UTC))
            env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKGUARD_")}
            env.update(
                DOCKGUARD_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
                DOCKGUARD_LOG_LEVEL="WARNING",
                DOCKGUARD_SCANNER_CACHE_DIR=str(db),
                DOCKGUARD_SCANNER_DB_REFRESH_H="0",
                DOCKGUARD_BUILD_NETWORK="none",
                DOCKGUARD_RUN_TIMEOUT_S=str(RUN_TIMEOUT_S),
                DOCKGUARD_WORKER_CONCURRENCY=str(CONCURRENCY),
            )
            api_log = stack.enter_context(
                process(
                    "dockguard",
                    [str(DOCKGUARD), "serve", "--host", "127.0.0.1", "--port", str(api_port)],
                    workdir,
                    env=env,
                    cwd=workdir,  # no project .env file is read
                )
            )
            api_url = f"http://127.0.0.1:{api_port}"
            wait_ready(f"{api_url}/readyz", api_log, "dockguard")
            config = workdir / "prometheus.yml"
            config.write_text(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                "scrape_configs:\n  - job_name: dockguard\n"
                f"    static_configs:\n      - targets: ['127.0.0.1:{api_port}']\n"
            )
            prom_log = stack.enter_context(
                process(
                    "prometheus",
                    [
                        "prometheus",
                        f"--config.file={config}",
                        f"--storage.tsdb.path={workdir / 'tsdb'}",
                        f"--web.listen-address=127.0.0.1:{prom_port}",
                    ],
                    workdir,
                    cwd=workdir,
                )
            )
            prom_url = f"http://127.0.0.1:{prom_port}"
            wait_ready(f"{prom_url}/-/ready", prom_log, "prometheus")
            time.sleep(5)  # a few scrapes before the traffic starts
            print(
                f"render_dashboard: traffic for {args.seconds:.0f} s against {api_url}", flush=True
            )
            with httpx.Client(base_url=api_url, timeout=30) as api:
                traffic = generate_traffic(api, args.seconds, job_ids)
            time.sleep(15)  # the last changes scraped
            total = sum(traffic.submitted.values())
            minutes = (traffic.ended - traffic.started) / 60
            day = datetime.fromtimestamp(traffic.started, UTC)
            notes = [
                f"Data: {day:%Y-%m-%d %H:%M} UTC, {minutes:.1f} min of synthetic traffic on one "
                f"machine: {total} submissions, {traffic.requests} API requests",
                f"(dockguard serve, worker concurrency {CONCURRENCY}, "
                f"run timeout {RUN_TIMEOUT_S} s, "
                "empty vulnerability DB, build network none). Times UTC. Stat panels: last value.",
            ]
            with httpx.Client(base_url=prom_url, timeout=30) as prom:
                summary = render(dashboard, prom, traffic, args.out, notes)
        print("submitted:", dict(traffic.submitted))
        print("outcomes:")
        for outcome, count in sorted(traffic.outcomes.items()):
            print(f"  {count:3d}  {outcome}")
        print("panels:")
        for line in summary:
            print("  " + line)
        print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KiB)")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        # dockguard removes its job containers itself; check that none of this run's is left
        # (other dockguard instances on this engine, e.g. a test run, have their own).
        names = subprocess.run(
            ["docker", "ps", "-a", "--filter", "label=dockguard.managed=true",
             "--format", "{{.Names}}"],
            capture_output=True, text=True, check=False,
        ).stdout.split()  # fmt: skip
        left = [name for name in names if any(job_id in name for job_id in job_ids)]
        if left:
            print(f"render_dashboard: WARNING: containers of this run left: {left}")
        else:
            print("render_dashboard: no container of this run is left")


if __name__ == "__main__":
    main()
