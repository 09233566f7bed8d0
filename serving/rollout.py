"""Shadow and canary: a second model beside the champion (settings ``serving.rollout``).

The challenger (registry alias ``serving.rollout.alias``) is held by its own ModelStore, polled and
hot-swapped like the champion. Modes:

- ``off``: the champion answers everything.
- ``shadow``: the champion answers; the request is queued (bounded) for a thread that scores it with the
  challenger and logs that prediction with the same request id and role ``shadow``. A full queue drops the
  shadow scoring (``serving_shadow_predictions_total{outcome="dropped"}``), never the client's request.
- ``canary``: an entity (the value of ``sticky_column``, else the request id) whose stable hash falls under
  ``canary_share`` is answered by the challenger (role ``canary``); if the challenger raises, the champion
  answers and the error counts against the canary.

The mode and share can change at run time (PUT /admin/rollout). They live in a small JSON file under the
state directory that every worker re-reads within half a second, so all workers follow, and a rollback
decided by one worker stops the canary in all. A canary crossing a rollback limit over its window is
stopped (mode off, share 0); the decision is appended to ``<state>/serving/rollout-decisions.jsonl``,
logged as one JSON line and counted in ``serving_rollout_rollbacks_total``. Statistics are per worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import queue
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa

from core.contract import label_text
from core.inference.predictor import Prediction
from core.settings import RolloutSettings, Settings
from serving import metrics
from serving.model_store import LoadedModel, ModelStore, Registry
from serving.prediction_log import PredictionLog

log = logging.getLogger(__name__)

_WINDOW_MAX = 200_000  # observations kept per worker, whatever the window's length
_PSI_BINS = 10
_MIN_CHAMPION_FOR_PSI = 50  # champion scores needed in the window before the distance is judged
_SHADOW_BATCH = 256  # queued requests scored together by the shadow thread


@dataclass(frozen=True)
class RolloutState:
    mode: str
    canary_share: float
    changed_at: str
    reason: str


@dataclass(frozen=True)
class _Observation:
    at: float
    role: str
    latency_ms: float
    error: bool
    scores: np.ndarray | None  # one value per row (see _scores)
    agreed: int = 0  # shadow rows whose label matched the champion's
    requests: int = 1  # the shadow thread scores several requests at once


def bucket(key: str) -> float:
    """A stable number in [0, 1) for an entity: the same key lands in the same place in every process."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def positive_index(model: LoadedModel) -> int:
    classes = model.predictor.classes
    if not classes:
        return 0
    positive = label_text(model.predictor.positive_class)
    texts = [label_text(c) for c in classes]
    return texts.index(positive) if positive in texts else len(classes) - 1


def log_result(  # noqa: PLR0917 - one call per endpoint and the shadow thread, all arguments are needed
    plog: PredictionLog,
    model: LoadedModel,
    columns: dict[str, Any],
    ids: list[str] | pa.Array,
    result: Prediction,
    flags: list[str | None] | pa.Array,
    latency_ms: float,
    role: str = "champion",
    *,
    wait: bool = True,
) -> None:
    """Hand the prediction log the arrays the prediction was made from: no per-row work here. ``wait=False``
    for a caller on the event loop, which then awaits ``plog.room()`` (see PredictionLog.room)."""
    probs = result.probabilities
    block: dict[str, Any] = {
        **columns,
        "request_id": ids,
        "model_name": model.name,
        "model_version": model.version,
        "timestamp": datetime.now(UTC),
        "latency_ms": latency_ms,
        "prediction": result.labels,
        "probability": probs[:, positive_index(model)] if probs is not None and probs.shape[1] == 2 else None,
        "flags": flags,
        "role": role,
    }
    if probs is not None and probs.shape[1] > 2:  # multiclass: every class's probability, p_<label> in the log
        block["probabilities"], block["classes"] = probs, result.classes
    plog.log_block(block, len(ids), wait=wait)


def _scores(model: LoadedModel, result: Prediction) -> np.ndarray | None:
    """What the score distance compares: P(positive) (binary), the value (regression), the class index
    (multiclass)."""
    task = model.predictor.contract.task
    try:
        if task == "regression":
            return np.asarray(result.labels, dtype=np.float64)
        probs = result.probabilities
        if task == "binary" and probs is not None and probs.shape[1] == 2:
            return np.asarray(probs[:, positive_index(model)], dtype=np.float64)
        texts = [label_text(c) for c in model.predictor.contract.classes]
        return np.asarray([texts.index(label_text(v)) if label_text(v) in texts else -1 for v in result.labels])
    except (TypeError, ValueError):
        return None


def psi(expected: np.ndarray, actual: np.ndarray, categorical: bool) -> float:
    """Population stability index of `actual` against `expected`: sum (a - e) ln(a / e) over bins (deciles of
    `expected`; the categories themselves when categorical)."""
    if categorical:
        edges = np.union1d(np.unique(expected), np.unique(actual))
        e = np.array([(expected == v).mean() for v in edges])
        a = np.array([(actual == v).mean() for v in edges])
    else:
        cuts = np.unique(np.quantile(expected, np.linspace(0, 1, _PSI_BINS + 1)[1:-1]))
        e = np.bincount(np.searchsorted(cuts, expected, side="right"), minlength=len(cuts) + 1) / len(expected)
        a = np.bincount(np.searchsorted(cuts, actual, side="right"), minlength=len(cuts) + 1) / len(actual)
    e, a = np.clip(e, 1e-4, None), np.clip(a, 1e-4, None)
    return float(np.sum((a - e) * np.log(a / e)))


class Rollout:
    """The second model, the mode, the shadow queue, the live window and the rollback rule of one worker."""

    def __init__(self, settings: Settings, registry: Registry, plog: PredictionLog) -> None:
        self.settings = settings
        self.config: RolloutSettings = settings.serving.rollout
        self.challenger = ModelStore(settings, registry, alias=self.config.alias, primary=False)
        self.plog = plog
        self.state_file = settings.state / "serving" / "rollout.json"
        self.decisions_file = settings.state / "serving" / "rollout-decisions.jsonl"
        self.state = RolloutState(self.config.mode, self.config.canary_share, _now(), "configured")
        self._state_mtime: int | None = None
        self._window: deque[_Observation] = deque(maxlen=_WINDOW_MAX)
        self._window_lock = threading.Lock()
        self._queue: queue.Queue[tuple[Any, ...] | None] = queue.Queue(maxsize=self.config.shadow_queue)
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._challenger_version: str | None = None
        self.dropped = 0
        self.last_decision: dict[str, Any] | None = None
        self._sync_state()

    # ---- the mode, shared by every worker through a file ---------------------------------------------
    def _configured(self) -> dict[str, Any]:
        return {"mode": self.config.mode, "canary_share": self.config.canary_share, "alias": self.config.alias}

    def _sync_state(self) -> None:
        """Adopt the run-time state file when it changed. A file written under other configured values (the
        settings changed since) is ignored: the configs win after a deliberate change."""
        try:
            mtime = self.state_file.stat().st_mtime_ns
        except FileNotFoundError:
            return
        if mtime == self._state_mtime:
            return
        self._state_mtime = mtime
        try:
            data = json.loads(self.state_file.read_text())
        except (OSError, ValueError) as exc:  # being replaced, or edited by hand: keep the current state
            log.warning("rollout state file %s unreadable: %s", self.state_file, exc)
            return
        if data.get("configured") != self._configured():
            return
        new = RolloutState(data["mode"], float(data["canary_share"]), data["changed_at"], data.get("reason", ""))
        if (new.mode, new.canary_share) != (self.state.mode, self.state.canary_share):
            self._clear_window()
            log.info("rollout: mode %s, canary share %s (%s)", new.mode, new.canary_share, new.reason)
        self.state = new

    def set_state(self, mode: str, canary_share: float, reason: str) -> RolloutState:
        """Change the mode for every worker (the file), and for this one at once."""
        new = RolloutState(mode, canary_share, _now(), reason)
        if (mode, canary_share) != (self.state.mode, self.state.canary_share):
            self._clear_window()
        self.state = new  # this worker first: a rollback must not wait for the disk
        try:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.state_file.with_name(f".{self.state_file.name}.{os.getpid()}")
            tmp.write_text(json.dumps({**asdict(new), "configured": self._configured()}))
            tmp.replace(self.state_file)  # atomic: a worker never reads half a file
            self._state_mtime = self.state_file.stat().st_mtime_ns
        except OSError as exc:
            log.error("rollout state not shared with the other workers (%s unwritable): %s", self.state_file, exc)
        return new

    # ---- the request path ----------------------------------------------------------------------------
    def route(self, champion: LoadedModel, key: Any, request_id: str) -> tuple[LoadedModel, str]:
        """Which model answers: the challenger for the canary's share of entities, else the champion."""
        state = self.state
        if state.mode != "canary" or state.canary_share <= 0:
            return champion, "champion"
        challenger = self.challenger.current
        if challenger is None:
            return champion, "champion"
        if bucket(request_id if key is None else str(key)) < state.canary_share:
            return challenger, "canary"
        return champion, "champion"

    @property
    def active(self) -> bool:
        return self.state.mode != "off"

    def observe(
        self, role: str, model: LoadedModel, result: Prediction | None, latency_ms: float, requests: int = 1
    ) -> None:
        """One answer (or, with `result` None, a failed prediction) into this worker's window."""
        scores = _scores(model, result) if result is not None else None
        obs = _Observation(time.monotonic(), role, latency_ms, result is None, scores, requests=requests)
        with self._window_lock:
            self._window.append(obs)

    def shadow(self, columns: dict[str, Any], ids: list[str], labels: list[Any], flags: list[str | None]) -> None:
        """Queue a request for shadow scoring; never waits: when the queue is full the scoring is dropped."""
        if self.state.mode != "shadow" or self.challenger.current is None:
            return
        try:
            self._queue.put_nowait((columns, ids, labels, flags))
        except queue.Full:
            self.dropped += 1
            metrics.SHADOW.labels(outcome="dropped").inc()

    # ---- the shadow thread ---------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._shadow_loop, name="shadow-scoring", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        with contextlib.suppress(queue.Full):  # a full queue: the thread sees _stopping within 0.5 s
            self._queue.put_nowait(None)
        if self._thread is not None:
            self._thread.join(timeout)

    def _shadow_loop(self) -> None:
        """Score what the queue holds, up to _SHADOW_BATCH requests in one prediction: under load the
        challenger's cost per request falls, and the event loop loses less time to this thread."""
        while not self._stopping.is_set():
            try:
                item = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            if item is None:
                return
            items = [item]
            while len(items) < _SHADOW_BATCH:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._score_shadow(items)
                    return
                items.append(more)
            self._score_shadow(items)

    def _score_shadow(self, items: list[tuple[Any, ...]]) -> None:
        challenger = self.challenger.current
        if challenger is None or self.state.mode != "shadow":
            return
        columns = {k: np.concatenate([it[0][k] for it in items]) for k in items[0][0]}
        ids = [i for it in items for i in it[1]]
        labels = [v for it in items for v in it[2]]
        flags = [f for it in items for f in it[3]]
        started = time.perf_counter()
        try:
            result = challenger.predictor.predict(columns)
        except Exception:  # a failing challenger must not stop the thread; it is counted and logged
            log.exception("shadow prediction by %s v%s failed", challenger.name, challenger.version)
            metrics.SHADOW.labels(outcome="error").inc(len(items))
            self.observe("shadow", challenger, None, (time.perf_counter() - started) * 1000, len(items))
            return
        latency_ms = (time.perf_counter() - started) * 1000 / len(items)
        try:
            log_result(self.plog, challenger, columns, ids, result, flags, latency_ms, role="shadow")
        except Exception:
            log.exception("shadow predictions could not be logged")
        agreed = sum(label_text(a) == label_text(b) for a, b in zip(labels, result.labels, strict=False))
        obs = _Observation(
            time.monotonic(), "shadow", latency_ms, False, _scores(challenger, result), agreed, len(items)
        )
        with self._window_lock:
            self._window.append(obs)
        metrics.SHADOW.labels(outcome="scored").inc(len(items))

    # ---- the window, the statistics and the rollback rule --------------------------------------------
    def _clear_window(self) -> None:
        with self._window_lock:
            self._window.clear()

    def _recent(self) -> list[_Observation]:
        since = time.monotonic() - self.config.rollback.window_s
        with self._window_lock:
            while self._window and self._window[0].at < since:
                self._window.popleft()
            return list(self._window)

    def stats(self) -> dict[str, Any]:
        """This worker's live figures over the rollback window, per role, and the canary's score distance."""
        recent = self._recent()
        out: dict[str, Any] = {"window_s": self.config.rollback.window_s, "worker_pid": os.getpid()}
        scores: dict[str, np.ndarray] = {}
        for role in ("champion", "canary", "shadow"):
            rows = [o for o in recent if o.role == role]
            if not rows:
                continue
            ok = np.array([o.latency_ms for o in rows if not o.error])
            requests = sum(o.requests for o in rows)
            errors = sum(o.requests for o in rows if o.error)
            figures: dict[str, Any] = {
                "requests": requests,
                "errors": errors,
                "error_rate": errors / requests,
                "p50_ms": float(np.percentile(ok, 50)) if len(ok) else None,
                "p99_ms": float(np.percentile(ok, 99)) if len(ok) else None,
            }
            if role == "shadow":  # rows (a request may hold several records) whose label the champion's matched
                compared = sum(len(o.scores) for o in rows if o.scores is not None)
                figures["agreement"] = sum(o.agreed for o in rows) / compared if compared else None
            parts = [o.scores for o in rows if o.scores is not None]
            if parts:
                scores[role] = np.concatenate(parts)
            out[role] = figures
        champion = scores.get("champion")
        categorical = self.settings.contract.task == "multiclass"
        for role in ("canary", "shadow"):
            other = scores.get(role)
            if champion is not None and other is not None and len(champion) >= _MIN_CHAMPION_FOR_PSI and len(other):
                out[role]["score_psi"] = psi(champion, other, categorical)
        return out

    def breaches(self, stats: dict[str, Any]) -> list[tuple[str, str]]:
        """(limit, reason) for each rollback limit the canary crosses; none before min_requests."""
        limits = self.config.rollback
        canary = stats.get("canary")
        if not canary or canary["requests"] < limits.min_requests:
            return []
        out = []
        if limits.max_error_rate is not None and canary["error_rate"] > limits.max_error_rate:
            out.append(("error_rate", f"error rate {canary['error_rate']:.3f} > {limits.max_error_rate}"))
        if limits.max_p99_ms is not None and canary["p99_ms"] is not None and canary["p99_ms"] > limits.max_p99_ms:
            out.append(("p99_ms", f"p99 latency {canary['p99_ms']:.1f} ms > {limits.max_p99_ms} ms"))
        score_psi = canary.get("score_psi")
        if limits.max_score_psi is not None and score_psi is not None and score_psi > limits.max_score_psi:
            out.append(("score_psi", f"score PSI vs the champion {score_psi:.3f} > {limits.max_score_psi}"))
        return out

    def check(self, champion: LoadedModel | None) -> dict[str, Any] | None:
        """Stop the canary when it crosses a limit; the decision, or None."""
        if self.state.mode != "canary":
            return None
        stats = self.stats()
        crossed = self.breaches(stats)
        if not crossed:
            return None
        challenger = self.challenger.current
        decision = {
            "decided_at": _now(),
            "decision": "rollback",
            "kind": "canary",
            "model_name": self.settings.model_name,
            "challenger_version": challenger.version if challenger else None,
            "champion_version": champion.version if champion else None,
            "canary_share": self.state.canary_share,
            "limits": [limit for limit, _ in crossed],
            "reason": "; ".join(reason for _, reason in crossed),
            "stats": stats,
        }
        self.set_state("off", 0.0, f"automatic rollback: {decision['reason']}")
        try:
            self.decisions_file.parent.mkdir(parents=True, exist_ok=True)
            with self.decisions_file.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(decision, default=str, sort_keys=True) + "\n")
        except OSError as exc:  # the log line below still records it
            log.error("rollout decision not written to %s: %s", self.decisions_file, exc)
        for limit, _ in crossed:
            metrics.ROLLBACKS.labels(limit=limit).inc()
        log.warning("canary rolled back: %s", json.dumps(decision, default=str, sort_keys=True))
        self.last_decision = decision
        return decision

    def decisions(self) -> list[dict[str, Any]]:
        if not self.decisions_file.exists():
            return []
        lines = self.decisions_file.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    # ---- the background loop -------------------------------------------------------------------------
    async def watch(self, champion_store: ModelStore) -> None:
        """Follow the state file (0.5 s), judge the canary (1 s), poll the challenger's alias."""
        interval = self.settings.serving.reload_interval_s
        next_poll = 0.0 if self.active else time.monotonic() + interval
        was_active = self.active
        tick = 0
        while True:
            await asyncio.sleep(0.5)
            tick += 1
            try:
                self._sync_state()
                if self.active and not was_active:  # switched on (maybe by another worker): load it now
                    next_poll = 0.0
                was_active = self.active
                if self.active and time.monotonic() >= next_poll:
                    next_poll = time.monotonic() + interval
                    await asyncio.to_thread(self.challenger.refresh)
                self._follow_version()
                if tick % 2 == 0:
                    self.check(champion_store.current)
            except Exception:  # the loop must outlive any single failure
                log.exception("rollout watcher iteration failed")

    def _follow_version(self) -> None:
        """A new challenger version starts a fresh window: its figures are not its predecessor's."""
        version = self.challenger.version
        if version != self._challenger_version:
            if self._challenger_version is not None:
                self._clear_window()
            self._challenger_version = version


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
