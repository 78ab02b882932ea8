"""Round records: metric means and how SecAgg+ rounds end (coordinator/rounds.py)."""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict

from coordinator.rounds import COMPLETED, MetricsSum, RoundTracker, SecAggWatch, _save_npz, add_metrics

pytestmark = pytest.mark.usefixtures("task_identity")


def _reply(content: RecordDict) -> Message:
    sent = Message(RecordDict(), 1, MessageType.TRAIN)
    return Message(content, reply_to=sent)


def test_replies_without_a_metric_do_not_dilute_its_mean() -> None:
    acc = MetricsSum()
    replies = [
        _reply(RecordDict({"m": MetricRecord({"num-examples": 10, "loss": 1.0})})),
        _reply(RecordDict({"m": MetricRecord({"num-examples": 30, "loss": 3.0, "acc": 0.5})})),
        # A SecAgg+ stage's reply: keys and shares, no metrics at all.
        _reply(RecordDict({"secaggplus_configs": ConfigRecord({"stage": "share_keys"})})),
    ]
    add_metrics(acc, replies, "num-examples")
    assert acc.mean() == {"loss": 2.5, "acc": 0.5}


def _tracker(tmp_path: Path, lines: list[str]) -> RoundTracker:
    return RoundTracker(tmp_path, weight_key="num-examples", total_rounds=2, keep_checkpoints=0, echo=lines.append)


def _secagg_round(tracker: RoundTracker, round_: str, stage: str, ok: int) -> None:
    sent = [
        Message(RecordDict({"secaggplus_configs": ConfigRecord({"stage": stage})}), n, MessageType.TRAIN)
        for n in (1, 2, 3)
    ]
    tracker.on_push(MessageType.TRAIN, round_, sent)
    replies = [_reply(RecordDict({"x": ConfigRecord({"a": 1})})) for _ in range(ok)]
    replies += [Message(Error(code=0, reason="the ClientApp raised"), reply_to=m) for m in sent[ok:]]
    tracker.on_close(MessageType.TRAIN, round_, replies, [1, 2, 3][:ok])


def test_secagg_rounds_that_halt_are_reported_and_fail_the_run(tmp_path: Path) -> None:
    lines: list[str] = []
    tracker = _tracker(tmp_path, lines)
    flwr = logging.getLogger("test-flwr")
    flwr.setLevel(logging.INFO)
    flwr.addHandler(SecAggWatch(tracker))
    for round_ in ("1", "2"):
        flwr.info("Secure aggregation commencing.")
        _secagg_round(tracker, round_, "collect_masked_vectors", 1)
        flwr.error("Insufficient available nodes.")
        flwr.info("Secure aggregation halted.")
    tracker.finish(None)
    assert [r["secure_aggregation"] for r in tracker.rounds] == [
        "Insufficient available nodes. (stage collect_masked_vectors: 1 of 3 nodes replied without an error)"
    ] * 2
    assert sum("secure aggregation halted, the model was not updated" in line for line in lines) == 2
    assert tracker.failure().startswith("secure aggregation halted in all 2 rounds that used it")


def test_one_completed_secagg_round_is_enough(tmp_path: Path) -> None:
    tracker = _tracker(tmp_path, [])
    watch = SecAggWatch(tracker)
    flwr = logging.getLogger("test-flwr-2")
    flwr.setLevel(logging.INFO)
    flwr.addHandler(watch)
    _secagg_round(tracker, "1", "unmask", 3)
    flwr.info("Secure aggregation completed.")
    _secagg_round(tracker, "2", "share_keys", 0)
    flwr.info("Secure aggregation halted.")
    tracker.finish(None)
    assert [r["secure_aggregation"] for r in tracker.rounds][0] == COMPLETED
    assert tracker.rounds[1]["secure_aggregation"].startswith("no reason was logged")
    assert tracker.failure() == ""


def _model() -> ArrayRecord:
    rng = np.random.default_rng(1)
    return ArrayRecord(
        {
            "conv.weight": Array(rng.random((4, 3, 3), dtype=np.float32)),
            "conv.bias": Array(np.arange(4, dtype=np.int64)),
            "fc.weight": Array(np.asfortranarray(rng.random((5, 2)))),
            "scalar": Array(np.array(2.5, dtype=np.float16)),
        }
    )


def test_checkpoints_and_the_final_model_hold_the_global_model(tmp_path: Path) -> None:
    model = _model()
    tracker = _tracker(tmp_path, [])
    tracker.on_push(MessageType.TRAIN, "1", [Message(RecordDict({"arrays": model}), 1, MessageType.TRAIN)])
    tracker.strategy_result(model)
    final = tracker.finish(None)
    assert final is not None
    for path in (tmp_path / "checkpoints" / "round_0001.npz", final):
        with np.load(path, allow_pickle=False) as saved:
            assert saved.files == list(model.keys())
            for name, array in model.items():
                expected = array.numpy()
                assert saved[name].dtype == expected.dtype and saved[name].shape == expected.shape
                assert np.array_equal(saved[name], expected)
    torch = pytest.importorskip("torch")
    state = torch.load(tmp_path / "final_model.pt")
    assert list(state) == list(model.keys())
    for name, tensor in model.to_torch_state_dict().items():
        assert torch.equal(state[name], tensor)


def test_a_checkpoint_is_written_as_np_savez_writes_it(tmp_path: Path) -> None:
    model = _model()
    _save_npz(tmp_path / "ours.npz", model)
    with (tmp_path / "theirs.npz").open("wb") as fh:
        np.savez(fh, **{k: v.numpy() for k, v in model.items()})  # type: ignore[arg-type]
    with zipfile.ZipFile(tmp_path / "ours.npz") as ours, zipfile.ZipFile(tmp_path / "theirs.npz") as theirs:
        assert ours.namelist() == theirs.namelist()
        for name in ours.namelist():
            assert ours.getinfo(name).compress_type == zipfile.ZIP_STORED
            assert ours.read(name) == theirs.read(name)


def test_a_model_array_that_is_not_plain_numbers_is_not_checkpointed(tmp_path: Path) -> None:
    bad = Array(np.array([1.0]))
    bad.data = bad.data[:-3]  # its .npy header promises more than it holds
    with pytest.raises(ValueError, match="not a plain numeric .npy buffer"):
        _save_npz(tmp_path / "round_0001.npz", ArrayRecord({"w": bad}))
    assert not (tmp_path / "round_0001.npz").exists()


def test_checkpoints_are_converted_to_pt_by_one_child_that_survives_a_bad_file(tmp_path: Path) -> None:
    import torch

    from coordinator import rounds

    for i in range(2):
        np.savez(tmp_path / f"r{i}.npz", w=np.arange(4.0) * i, b=np.ones(2, np.float32))
    assert rounds.npz_to_pt(tmp_path / "r0.npz", tmp_path / "r0.pt") == ""
    child = rounds._CONVERTER.proc
    assert child is not None and child.poll() is None
    assert "FileNotFoundError" in rounds.npz_to_pt(tmp_path / "missing.npz", tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()
    assert rounds.npz_to_pt(tmp_path / "r1.npz", tmp_path / "r1.pt") == ""
    assert rounds._CONVERTER.proc is child, "a second child was started"
    state = torch.load(tmp_path / "r1.pt")
    assert list(state) == ["w", "b"] and state["w"].tolist() == [0.0, 1.0, 2.0, 3.0]
