"""Round reporting and checkpoints.

Sees every batch the Grid pushes and closes. A round is the set of batches with
one `group_id` (Flower uses the server round). When the next round starts (or
the run ends) the finished round gets one printed line, a JSON record in
`rounds.jsonl`, and a checkpoint of the global model it produced:
`checkpoints/round_NNNN.npz` plus `round_NNNN.json` (round, metrics,
participants). At the end the final model is written as `final_model.pt`
(PyTorch state_dict) and `final_model.npz`.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import queue
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MessageType, RecordDict

from fedota_common import tracing
from fedota_common.aggregate import LEGACY_WEIGHT_KEY, REJECTED, NotAggregatable, reply_weight
from fedota_common.payload import NUMPY_STYPE, PayloadError, WireArray, npy_view

log = logging.getLogger(__name__)

TRAIN_LOSS_KEYS = ("train_loss", "train-loss", "loss")
EVAL_ACC_KEYS = ("eval_acc", "eval-acc", "eval_accuracy", "accuracy", "acc")
EVAL_LOSS_KEYS = ("eval_loss", "eval-loss", "loss")
# Distinct rejection reasons a round record keeps (the most frequent).
MAX_REASONS = 10
# Checkpoints are written from the model's bytes in slices of this size.
_WRITE_SLICE = 16 * 1024 * 1024


@dataclass
class MetricsSum:
    """Running weighted sums of reply metrics; a round may span several batches."""

    sums: dict[str, float] = field(default_factory=dict)
    # Per metric: the weight of the replies that carried it (a SecAgg+ stage's reply
    # carries none and must not dilute the others').
    weights: dict[str, float] = field(default_factory=dict)

    def mean(self) -> dict[str, float]:
        means = {k: v / self.weights[k] for k, v in self.sums.items() if self.weights.get(k)}
        return {k: v for k, v in means.items() if math.isfinite(v)}


@dataclass
class RoundRecord:
    round: str
    started: float = field(default_factory=time.time)
    finished: float = 0.0
    participants: set[int] = field(default_factory=set)
    failures: int = 0
    # Failures whose reply was refused (malformed, unlike the model, NaN, bad weight).
    rejected: int = 0
    # Why, as the rejections said it (the text after "reply rejected: "), with counts.
    rejections: collections.Counter[str] = field(default_factory=collections.Counter)
    # Replies asked for and replies delivered to the ServerApp with content (train / all).
    asked: int = 0
    results: int = 0
    train_asked: int = 0
    train_results: int = 0
    train: MetricsSum = field(default_factory=MetricsSum)
    evaluate: MetricsSum = field(default_factory=MetricsSum)
    eval_participants: set[int] = field(default_factory=set)
    # Flower's SecAgg+ workflow: "completed", or why it halted ("" if the round used none).
    secure_aggregation: str = ""
    # The round's trace span (tracing off: a no-op one), ended with the record.
    span: tracing.Span | None = field(default=None, repr=False, compare=False)

    def as_json(self) -> dict[str, Any]:
        return {
            "round": int(self.round) if self.round.isdigit() else self.round,
            "started": self.started,
            "finished": self.finished,
            "seconds": round(self.finished - self.started, 3),
            "participants": sorted(self.participants),
            "failures": self.failures,
            "rejected": self.rejected,
            "rejected_reasons": dict(self.rejections.most_common(MAX_REASONS)),
            "asked": self.asked,
            "results": self.results,
            "no_results": self.asked > 0 and self.results == 0,
            "train_metrics": self.train.mean(),
            "eval_metrics": self.evaluate.mean(),
            "eval_participants": len(self.eval_participants),
            # Node ids, so evaluate contributions can be credited like train ones.
            "eval_nodes": sorted(self.eval_participants),
            **({"secure_aggregation": self.secure_aggregation} if self.secure_aggregation else {}),
        }


def add_metrics(acc: MetricsSum, replies: list[Message], weight_key: str) -> None:
    """Add every numeric metric of the replies (both Flower styles), weighted by examples."""
    sums, weights = acc.sums, acc.weights
    for reply in replies:
        if not reply.has_content():
            continue
        content = reply.content
        try:
            w = reply_weight(content, weight_key)
        except NotAggregatable:
            w = 1.0  # no usable weight (the flower reply policy delivers zero or none): count the reply once
        if not math.isfinite(w):
            w = 1.0
        values: dict[str, float] = {}
        for rec in content.metric_records.values():
            for k, mv in rec.items():
                if k not in (weight_key, LEGACY_WEIGHT_KEY) and isinstance(mv, (int, float)):
                    values[k] = float(mv)
        for name, crec in content.config_records.items():
            if name.endswith(".metrics"):
                for k, cv in crec.items():
                    if isinstance(cv, (int, float)) and not isinstance(cv, bool):
                        values[k] = float(cv)
        for k, fv in values.items():
            if math.isfinite(fv):  # the flower reply policy delivers NaN; the dashboard wants numbers
                sums[k] = sums.get(k, 0.0) + fv * w
                weights[k] = weights.get(k, 0.0) + w


COMPLETED = "completed"
# Where Flower's SecAgg+ workflow puts a stage's settings in the messages it sends.
SECAGG_RECORD = "secaggplus_configs"


class SecAggWatch(logging.Handler):
    """Tells the tracker how each round of Flower's SecAgg+ workflow ended, from Flower's own log.

    The workflow reports nothing else: a halted round just leaves the model as
    it was. Its last warning or error before "Secure aggregation halted." says
    why (too few nodes answered a stage, too few shares to unmask).
    """

    def __init__(self, tracker: RoundTracker) -> None:
        super().__init__(logging.INFO)
        self.tracker = tracker
        self.last_problem = ""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except (TypeError, ValueError):
            return
        if text == "Secure aggregation commencing.":
            self.last_problem = ""
        elif text == "Secure aggregation completed.":
            self.tracker.secure_aggregation(COMPLETED)
        elif text == "Secure aggregation halted.":
            self.tracker.secure_aggregation(self.last_problem or "no reason was logged")
        elif record.levelno >= logging.WARNING:
            self.last_problem = text.strip()


def _first(metrics: dict[str, float], keys: tuple[str, ...]) -> float | None:
    for k in keys:
        if k in metrics:
            return metrics[k]
    return None


def _only_arrays(content: RecordDict) -> ArrayRecord | None:
    records = list(content.array_records.values())
    return records[0] if len(records) == 1 else None


class RoundTracker:
    """Implements the Grid's RoundObserver: prints, records and checkpoints rounds."""

    def __init__(
        self,
        state_dir: Path,
        *,
        weight_key: str,
        total_rounds: int | None,
        keep_checkpoints: int,
        echo: Callable[[str], None] = print,
        on_round: Callable[[dict[str, Any]], None] | None = None,
        on_checkpoint: Callable[[int, Path], None] | None = None,
        warn: Callable[[str], None] | None = None,
        attempt: int = 1,
        trace_parent: tracing.Context | None = None,
    ) -> None:
        self.dir = state_dir
        # Attempt K > 1 writes its own checkpoints: a restart never overwrites an earlier attempt's.
        self.attempt = attempt
        self.ckpt_dir = state_dir / "checkpoints" / (f"attempt-{attempt}" if attempt > 1 else "")
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        self.weight_key = weight_key
        self.total_rounds = total_rounds
        self.keep = keep_checkpoints
        self.echo = echo
        # A round with rejected replies or no results says so on its own line.
        self.warn = warn or echo
        self.on_round = on_round
        # Each round's span is a child of this (the coordinator's run span).
        self.trace_parent = trace_parent
        # Over the whole run: replies asked for, delivered with content, rejected (and why).
        self.asked = collections.Counter[str]()
        self.results = collections.Counter[str]()
        self.rejections: collections.Counter[str] = collections.Counter()
        # SecAgg+ rounds by outcome (True: completed), and the last reason one halted.
        self.secagg: collections.Counter[bool] = collections.Counter()
        self.secagg_halt = ""
        # The last SecAgg+ stage pushed: (stage, nodes asked, replies with content).
        self._stage: tuple[str, int, int] | None = None
        # Called from the writer thread once a round's .npz is complete on disk.
        self.on_checkpoint = on_checkpoint
        self.current: RoundRecord | None = None
        self.rounds: list[dict[str, Any]] = []
        self._model_after: dict[str, ArrayRecord] = {}
        # Server-optimiser state as a train round starts, and per finished round (see resume.py).
        self._pending_state: dict[str, np.ndarray] | None = None
        self._state_after: dict[str, dict[str, np.ndarray]] = {}
        self._latest: ArrayRecord | None = None
        self._lock = threading.Lock()
        self._writes: queue.Queue[tuple[Path, ArrayRecord | dict[str, np.ndarray]] | None] = queue.Queue(maxsize=3)
        self._writer = threading.Thread(target=self._write_loop, name="checkpoint-writer", daemon=True)
        self._writer.start()

    # ---- RoundObserver -------------------------------------------------------------

    def on_push(self, message_type: str, group_id: str, messages: list[Message]) -> None:
        # The compatibility workflow pushes one message per client from parallel threads.
        with self._lock:
            self._on_push(message_type, group_id, messages)

    def note_strategy_state(self, state: dict[str, np.ndarray]) -> None:
        with self._lock:
            self._pending_state = state or None

    def _on_push(self, message_type: str, group_id: str, messages: list[Message]) -> None:
        if not messages or not messages[0].has_content():
            return
        secagg = messages[0].content.config_records.get(SECAGG_RECORD)
        stage = secagg.get("stage") if secagg is not None else None
        self._stage = (str(stage), len(messages), 0) if stage else None
        arrays = _only_arrays(messages[0].content)
        if message_type == MessageType.TRAIN:
            if self.current is not None and self.current.round != group_id:
                if arrays is not None and group_id.isdigit():
                    # The model sent for round r+1 is the aggregate of round r.
                    self._model_after.setdefault(str(int(group_id) - 1), arrays)
                    if self._pending_state is not None:
                        self._state_after[str(int(group_id) - 1)] = self._pending_state
                self._finish_round()
            self._pending_state = None
            if self.current is None:
                self.current = self._new_round(group_id)
        elif message_type == MessageType.EVALUATE and arrays is not None:
            self._model_after[group_id] = arrays
            if self.current is None:
                self.current = self._new_round(group_id)

    def _new_round(self, group_id: str) -> RoundRecord:
        rec = RoundRecord(group_id)
        attributes: dict[str, str | int] = {"fedota.round": int(group_id) if group_id.isdigit() else group_id}
        if self.attempt > 1:
            attributes["fedota.attempt"] = self.attempt
        rec.span = tracing.tracer().start_span(
            "coordinator.round",
            context=self.trace_parent,
            attributes=attributes,
            start_time=int(rec.started * 1e9),
        )
        return rec

    def trace_context(self, group_id: str) -> dict[str, str]:
        """The trace context a batch of round `group_id` carries to the selectors: the round's
        span, or the run's for messages outside any round ({} when tracing is off)."""
        with self._lock:
            rec = self.current
            if rec is not None and rec.round == group_id and rec.span is not None:
                return tracing.inject(rec.span)
        return tracing.inject(self.trace_parent) if self.trace_parent is not None else {}

    def on_close(self, message_type: str, group_id: str, replies: list[Message], participants: list[int]) -> None:
        with self._lock:
            rec = self.current
            if rec is None or rec.round != group_id:
                return
            rec.finished = time.time()
            ok = [r for r in replies if r.has_content()]
            reasons = [
                (r.error.reason or "")[len(REJECTED) :].lstrip(": ")[:300] or "(no reason given)"
                for r in replies
                if r.has_error() and (r.error.reason or "").startswith(REJECTED)
            ]
            rec.rejected += len(reasons)
            rec.rejections.update(reasons)
            self.rejections.update(reasons)
            rec.asked += len(replies)
            rec.results += len(ok)
            if self._stage is not None:
                self._stage = (self._stage[0], len(replies), len(ok))
            self.asked[message_type] += len(replies)
            self.results[message_type] += len(ok)
            if message_type == MessageType.TRAIN:
                rec.train_asked += len(replies)
                rec.train_results += len(ok)
                rec.participants.update(participants)
                rec.failures += len(replies) - len(ok)
                add_metrics(rec.train, ok, self.weight_key)
            elif message_type == MessageType.EVALUATE:
                add_metrics(rec.evaluate, ok, self.weight_key)
                rec.eval_participants.update(participants)

    def secure_aggregation(self, outcome: str) -> None:
        """Flower's SecAgg+ workflow ended the current round: `COMPLETED` or why it halted."""
        with self._lock:
            if outcome != COMPLETED and self._stage is not None:
                name, asked, answered = self._stage
                outcome += f" (stage {name}: {answered} of {asked} nodes replied without an error)"
            if self.current is not None:
                self.current.secure_aggregation = outcome
            self.secagg[outcome == COMPLETED] += 1
            if outcome != COMPLETED:
                self.secagg_halt = outcome

    def failure(self) -> str:
        """Why the run must count as failed ("" if it need not): nothing it asked for was accepted.

        A run that sent training instructions needs one accepted train reply; a
        run that only sent other messages needs one accepted reply of any kind.
        A run that asked for nothing (no rounds) has nothing to judge. A run
        whose rounds all used SecAgg+ needs one round whose secure aggregation
        completed: a halted round's replies are keys and shares, not a model.
        """
        with self._lock:
            if self.secagg[False] and not self.secagg[True]:
                return (
                    f"secure aggregation halted in all {self.secagg[False]} rounds that used it; "
                    f"the last time: {self.secagg_halt}"
                )
            kind = "train" if self.asked[MessageType.TRAIN] else "any"
            asked = self.asked[MessageType.TRAIN] if kind == "train" else sum(self.asked.values())
            got = self.results[MessageType.TRAIN] if kind == "train" else sum(self.results.values())
            if not asked or got:
                return ""
            rejected = sum(self.rejections.values())
            what = "training reply" if kind == "train" else "reply"
            why = f"no round got a single accepted {what}: {asked} asked for"
            if rejected:
                top = "; ".join(f"{reason} (x{n})" for reason, n in self.rejections.most_common(3))
                why += f", {rejected} rejected: {top}"
            failed = asked - rejected
            if failed:
                why += f", {failed} failed or never came"
            return why

    # ---- end of run ----------------------------------------------------------------------

    def strategy_result(self, arrays: ArrayRecord) -> None:
        """A Flower strategy's `start()` returned: `arrays` is the model its last round produced.

        Without this, an app that never evaluates after its last round left that
        round without a checkpoint and the final model one round behind: the
        coordinator only sees the models it sends out.
        """
        with self._lock:
            if self.current is not None and len(arrays) > 0:
                self._model_after[self.current.round] = arrays

    def finish(self, final_state: RecordDict | None) -> Path | None:
        """Close the last round and write the final model; returns its .npz path."""
        with self._lock:
            if final_state is not None and self.current is not None:
                state_arrays = _only_arrays(final_state) if final_state.array_records else None
                if state_arrays is not None:
                    # The compatibility workflow keeps the final global model here.
                    self._model_after[self.current.round] = state_arrays
            self._finish_round()
        self._writes.put(None)
        self._writer.join()
        arrays = self._latest
        if arrays is None:
            log.warning("no global model was seen; no final model written")
            return None
        npz = self.dir / "final_model.npz"
        _save_npz(npz, arrays)
        problem = npz_to_pt(npz, self.dir / "final_model.pt")
        if problem:
            log.warning("could not write final_model.pt", extra={"error": problem})
        (self.dir / "summary.json").write_text(json.dumps({"rounds": self.rounds}, indent=2))
        return npz

    # ---- internals ---------------------------------------------------------------------

    def _finish_round(self) -> None:
        rec = self.current
        self.current = None
        if rec is None:
            return
        if not rec.finished:
            rec.finished = time.time()
        doc = rec.as_json()
        if rec.span is not None:
            rec.span.set_attributes(
                {
                    "fedota.participants": len(rec.participants),
                    "fedota.asked": rec.asked,
                    "fedota.results": rec.results,
                    "fedota.failures": rec.failures,
                    "fedota.rejected": rec.rejected,
                }
            )
            rec.span.end(end_time=int(rec.finished * 1e9))
            rec.span = None
        arrays = self._model_after.get(rec.round)
        if arrays is not None:
            self._latest = arrays
        state = self._state_after.pop(rec.round, None) if arrays is not None else None
        # Hold no model older than this round: a long run must not grow in memory.
        if rec.round.isdigit():
            for key in [k for k in self._model_after if not k.isdigit() or int(k) <= int(rec.round)]:
                del self._model_after[key]
            for key in [k for k in self._state_after if not k.isdigit() or int(k) <= int(rec.round)]:
                del self._state_after[key]
        number = f"{int(rec.round):04d}" if rec.round.isdigit() else rec.round
        model_path, state_path = self.ckpt_dir / f"round_{number}.npz", self.ckpt_dir / f"strategy_{number}.npz"
        doc["attempt"] = self.attempt
        doc["checkpoint"] = str(model_path.relative_to(self.dir)) if arrays is not None else None
        doc["strategy_state"] = str(state_path.relative_to(self.dir)) if state else None
        self.rounds.append(doc)
        (self.ckpt_dir / f"round_{number}.json").write_text(json.dumps(doc, indent=2))
        with (self.dir / "rounds.jsonl").open("a") as fh:
            fh.write(json.dumps(doc) + "\n")
        if arrays is not None:
            # The state first: a model on disk then always has its state beside it.
            if state:
                self._writes.put((state_path, state))
            self._writes.put((model_path, arrays))
        loss = _first(rec.train.mean(), TRAIN_LOSS_KEYS)
        acc = _first(rec.evaluate.mean(), EVAL_ACC_KEYS)
        total = f"/{self.total_rounds}" if self.total_rounds else ""
        self.echo(
            f"round {rec.round}{total} | clients {len(rec.participants)}"
            f" | train_loss {'-' if loss is None else f'{loss:.4f}'}"
            f" | eval_acc {'-' if acc is None else f'{acc:.4f}'}"
            f" | {doc['seconds']:.2f} s"
        )
        if rec.rejected:
            reasons = "; ".join(f"{reason} (x{n})" for reason, n in rec.rejections.most_common(3))
            more = len(rec.rejections) - 3
            self.warn(
                f"warning: round {rec.round}: {rec.rejected} {'reply' if rec.rejected == 1 else 'replies'} "
                f"rejected: {reasons}" + (f"; and {more} other reasons" if more > 0 else "")
            )
        if rec.secure_aggregation not in ("", COMPLETED):
            self.warn(
                f"warning: round {rec.round}: secure aggregation halted, the model was not updated: "
                f"{rec.secure_aggregation}"
            )
        if rec.asked and not rec.results:
            lost = rec.asked - rec.rejected
            self.warn(
                f"warning: round {rec.round}: no results accepted: {rec.asked} asked for, {rec.rejected} rejected"
                + (f", {lost} failed or never came" if lost else "")
            )
        if self.on_round is not None:
            self.on_round(doc)

    def _write_loop(self) -> None:
        while (item := self._writes.get()) is not None:
            path, arrays = item
            try:
                _save_npz(path, arrays)
                number = _round_of(path)
                if self.on_checkpoint is not None and number is not None:
                    self.on_checkpoint(number, path)
                if number is not None:
                    self._prune()
            except Exception:  # a failed checkpoint must not stop training
                log.exception("checkpoint write failed", extra={"path": str(path)})

    def _prune(self) -> None:
        if self.keep <= 0:
            return
        for pattern in ("round_*.npz", "strategy_*.npz"):
            files = sorted(self.ckpt_dir.glob(pattern))
            for old in files[: -self.keep]:
                old.unlink(missing_ok=True)


# Run by `npz_to_pt` in one child process: it imports torch once, then converts each
# "<npz>\t<pt>" line it reads and answers "ok" or the error. Same keys and order as Flower's
# `ArrayRecord.to_torch_state_dict()`: the .npz holds the arrays in the record's order.
_TO_PT = """
import collections, os, sys
import numpy as np
try:
    import torch
except ImportError:
    sys.exit(3)
for line in sys.stdin:
    npz, pt = line.rstrip("\\n").split("\\t")
    try:
        with np.load(npz, allow_pickle=False) as arrays:
            state = collections.OrderedDict((k, torch.from_numpy(arrays[k])) for k in arrays.files)
        torch.save(state, pt + ".tmp")
        del state
        os.replace(pt + ".tmp", pt)
        print("ok", flush=True)
    except Exception as exc:
        print(repr(exc).replace("\\n", " "), flush=True)
"""
TO_PT_TIMEOUT = 1800.0
NO_TORCH = "torch is not installed"


class _PtConverter:
    """The child process that writes .pt files, started on first use and kept for the next.

    Importing torch takes a child Python seconds of CPU (more on a busy machine): one child
    per checkpoint made a run's uploads fall minutes behind its rounds, and the coordinator's
    exit cut off what was still queued. The child ends when the coordinator does (its stdin
    closes).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.proc: subprocess.Popen[str] | None = None

    def convert(self, npz: Path, pt: Path) -> str:
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                try:
                    self.proc = subprocess.Popen(
                        [sys.executable, "-c", _TO_PT],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.DEVNULL,
                        text=True,
                    )
                except OSError as exc:
                    return str(exc)
            proc = self.proc
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(f"{npz}\t{pt}\n")
                proc.stdin.flush()
            except OSError:
                pass  # it exited: its exit code says why
            answer = _read_line(proc.stdout, TO_PT_TIMEOUT)
            if answer == "ok":
                return ""
            pt.with_name(pt.name + ".tmp").unlink(missing_ok=True)
            if answer is None:
                if proc.poll() is None:
                    proc.kill()
                if proc.wait() == 3:
                    return NO_TORCH
                return f"the converter exited with code {proc.returncode}"
            return answer


def _read_line(stream: IO[str], timeout: float) -> str | None:
    """A line from `stream` without its newline; None at its end or after `timeout` seconds."""
    import select

    ready, _, _ = select.select([stream], [], [], timeout)
    if not ready:
        return None
    line = stream.readline()
    return line.rstrip("\n") if line else None


_CONVERTER = _PtConverter()


def npz_to_pt(npz: Path, pt: Path) -> str:
    """Write the arrays of `npz` as a PyTorch state_dict at `pt`; "" if written, else why not.

    In a child process: importing torch costs the coordinator about 175 MiB for
    the rest of its life, and converting holds the model once more; both are
    the child's. Without torch there is no .pt (it is optional).
    """
    return _CONVERTER.convert(npz, pt)


def _round_of(path: Path) -> int | None:
    """The round number in `round_NNNN.npz`; None for a round named otherwise."""
    digits = path.stem.removeprefix("round_")
    return int(digits) if digits.isdigit() else None


def _save_npz(path: Path, arrays: ArrayRecord | dict[str, np.ndarray]) -> None:
    """Write `arrays` as `np.savez` does (one stored `<name>.npy` per array), via a temporary file.

    A numpy `Array`'s data already is a `.npy` file (Flower fills it with
    `np.save`), so it is written as it lies: decoding it first (`Array.numpy()`)
    made the checkpoint writer hold one more copy of the model.
    """
    tmp = path.with_suffix(".tmp.npz")
    try:
        with tmp.open("wb") as fh, zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, value in arrays.items():
                # Forced as np.savez forces it (numpy gh-10776): the size is not known before writing.
                with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                    if isinstance(value, Array):
                        _write_npy(member, value)
                    else:
                        np.lib.format.write_array(member, np.asanyarray(value))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)


def _write_npy(out: IO[bytes], array: Array) -> None:
    """Write a numpy `Array`'s `.npy` bytes, checked as `np.load(allow_pickle=False)` would read them."""
    if array.stype != NUMPY_STYPE:
        np.lib.format.write_array(out, array.numpy(), allow_pickle=False)  # numpy() says what it cannot read
        return
    data = memoryview(array.data).cast("B")
    try:
        npy_view(WireArray(array.dtype, tuple(array.shape), array.stype, data))
    except PayloadError as exc:
        raise ValueError(f"array is not a plain numeric .npy buffer: {exc}") from exc
    for start in range(0, len(data), _WRITE_SLICE):
        out.write(data[start : start + _WRITE_SLICE])
