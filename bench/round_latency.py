"""Round latency and memory of the federation core with a no-training app.

    python bench/round_latency.py [--clients 10] [--selectors 2] [--rounds 20] [--sizes 1,100]
    python bench/round_latency.py --model-mb 1024 --clients 2 --selectors 1 --rounds 2   # a 1 GB model
    python bench/round_latency.py --app distinct --aggregation individual               # an uploaded app, unfolded

For each model size it runs `coordinator.local` with a no-training app and
Flower's FedAvg:
- `echo` (tests/apps/echo): each client returns the arrays it received;
- `distinct` (tests/apps/distinct): written like a third party's app (no
  `strategy` run-config key): each client returns its own arrays (received +
  a constant of its partition) and its own `num-examples`; its model is one
  array, or `--layers N` weight arrays with a small bias each;
- or the path of another app folder that reads `model-size-mb` and
  `min-available-nodes` from its run config.
It then reports:
- median round time (coordinator's round records),
- platform overhead per round: round time minus the slowest client's ClientApp
  time in that round (from the clients' "task done" log lines),
- peak resident memory (VmHWM) of the coordinator, the busiest selector and
  the busiest client, sampled from /proc while they run, in MiB and as a
  multiple of the model size (the interpreter, gRPC and Flower alone take
  about 130 MiB in a selector and 210 MiB in the coordinator),
- whether the coordinator folded train replies at the selectors, and why
  (its "replies folded" / "replies sent individually" log line).
Figures vary by machine; record them in bench/README.md with the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _hwm_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _sample_peaks(out: Path, stop: threading.Event, peaks: dict[str, int]) -> None:
    while not stop.is_set():
        pids_file = out / "pids.json"
        if pids_file.exists():
            try:
                pids = json.loads(pids_file.read_text())
            except json.JSONDecodeError:
                pids = {}
            for name, pid in pids.items():
                peaks[name] = max(peaks.get(name, 0), _hwm_kib(pid))
        stop.wait(0.2)


APPS = {"echo": REPO / "tests" / "apps" / "echo", "distinct": REPO / "tests" / "apps" / "distinct"}


def _app_path(app: str) -> Path:
    return APPS[app] if app in APPS else Path(app).resolve()


def _train_folding(out: Path, stdout: str, aggregation: str) -> str:
    """The coordinator's decision for train rounds, as it logged it (it logs each change once)."""
    if aggregation != "auto":
        # Forced either way: the coordinator does not look at the app, nor log a decision.
        return f"{'individual' if aggregation == 'individual' else 'folded'} (--aggregation {aggregation})"
    log = out / "logs" / "coordinator.log"
    lines = stdout.splitlines() + (log.read_text(errors="replace").splitlines() if log.exists() else [])
    said = []
    for line in lines:
        if "replies folded at the selectors" not in line and "replies sent individually" not in line:
            continue
        try:
            doc = json.loads(line)
        except json.JSONDecodeError:
            continue
        if doc.get("type") == "train":
            folded = "folded" if "folded" in str(doc.get("message", doc.get("msg", line))) else "individual"
            said.append(f"{folded} ({doc.get('reason', '?')})")
    return "; ".join(dict.fromkeys(said)) or "not logged"


def run_once(
    size_mb: float, clients: int, selectors: int, rounds: int, aggregation: str, app: str, work: Path, layers: int = 1
) -> dict[str, float | str]:
    data = work / f"data-{size_mb}"
    for i in range(clients):
        (data / f"client_{i:02d}").mkdir(parents=True, exist_ok=True)
    out = work / f"run-{size_mb}"
    peaks: dict[str, int] = {}
    stop = threading.Event()
    sampler = threading.Thread(target=_sample_peaks, args=(out, stop, peaks), daemon=True)
    sampler.start()
    started = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "coordinator.local",
            "--app",
            str(_app_path(app)),
            "--data-dir",
            str(data),
            "--selectors",
            str(selectors),
            "--rounds",
            str(rounds),
            "--out",
            str(out),
            "--overselect",
            "1.0",
            "--round-timeout",
            "1800",
            "--aggregation",
            aggregation,
            "--run-config",
            json.dumps(
                {"model-size-mb": float(size_mb), "min-available-nodes": clients}
                # Only the distinct app reads it; other apps keep their own layout.
                | ({"model-layers": layers} if layers > 1 else {})
            ),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    wall = time.monotonic() - started
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    records = [json.loads(x) for x in (out / "coordinator" / "rounds.jsonl").read_text().splitlines()]
    # Round 1 includes clients loading the app; report steady state from round 2 on.
    steady = records[1:] if len(records) > 1 else records
    client_secs: dict[int, float] = {}
    for log in (out / "logs").glob("client-*.log"):
        for line in log.read_text().splitlines():
            if '"task done"' in line:
                doc = json.loads(line)
                rnd = int(doc.get("round") or 0)
                client_secs[rnd] = max(client_secs.get(rnd, 0.0), float(doc["app_seconds"]))
    overheads = [r["seconds"] - client_secs.get(int(r["round"]), 0.0) for r in steady]
    return {
        "model_mb": size_mb,
        "rounds": len(records),
        "median_round_s": statistics.median(r["seconds"] for r in steady),
        "median_overhead_s": statistics.median(overheads),
        "coordinator_peak_mib": peaks.get("coordinator", 0) / 1024,
        "selector_peak_mib": max((v for k, v in peaks.items() if k.startswith("selector")), default=0) / 1024,
        "client_peak_mib": max((v for k, v in peaks.items() if k.startswith("client")), default=0) / 1024,
        "wall_s": wall,
        "train_folding": _train_folding(out, proc.stdout, aggregation),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--selectors", type=int, default=2)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--sizes", default="1,100", help="model sizes in MB, comma-separated")
    p.add_argument("--model-mb", type=float, default=None, help="one model size in MB (overrides --sizes)")
    p.add_argument(
        "--aggregation",
        default="auto",
        choices=["auto", "weighted-mean", "individual"],
        help="auto (the coordinator's default): selectors pre-aggregate when the ServerApp's strategy is Flower's "
        "own weighted mean; weighted-mean: always; individual: every reply is forwarded",
    )
    p.add_argument(
        "--app",
        default="echo",
        help="echo (clients return what they received), distinct (each client returns its own arrays, "
        "no strategy key: an uploaded app), or an app folder",
    )
    p.add_argument(
        "--layers",
        type=int,
        default=1,
        help="distinct app only: split the model into this many weight arrays (each with a 64-byte bias), "
        "as a model with layers is; 1 (the default, as earlier figures): one array",
    )
    args = p.parse_args()
    layout = f", {args.layers} layers" if args.layers > 1 else ""
    print(
        f"{args.clients} clients, {args.selectors} selectors, {args.rounds} rounds, {args.app} app{layout},"
        f" {args.aggregation}"
    )
    print(
        f"{'model':>8} {'median round':>13} {'overhead/round':>15} {'coordinator peak':>17} {'selector peak':>14}"
        f" {'client peak':>12} {'wall':>7}"
    )
    sizes = [args.model_mb] if args.model_mb else [float(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="fedota-bench-") as tmp:
        for size in sizes:
            r = run_once(
                size, args.clients, args.selectors, args.rounds, args.aggregation, args.app, Path(tmp), args.layers
            )
            print(
                f"{r['model_mb']:>6.0f}MB {r['median_round_s']:>12.3f}s {r['median_overhead_s']:>14.3f}s "
                f"{r['coordinator_peak_mib']:>15.0f}MiB {r['selector_peak_mib']:>12.0f}MiB "
                f"{r['client_peak_mib']:>10.0f}MiB {r['wall_s']:>6.0f}s",
                flush=True,
            )
            # The bench apps' model of `size` "MB" is `size` MiB of float32.
            print(
                f"{'':>8} peak / model size: coordinator {r['coordinator_peak_mib'] / size:.2f}x, "
                f"selector {r['selector_peak_mib'] / size:.2f}x, client {r['client_peak_mib'] / size:.2f}x",
                flush=True,
            )
            print(f"{'':>8} train replies: {r['train_folding']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
