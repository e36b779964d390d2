"""Prometheus metrics in the text exposition format, without the ``prometheus_client`` dependency.

Only what the server needs: counters and histograms with labels, rendered on ``GET /metrics``.
Updates come from the event loop and from worker threads, so every change takes a lock.
"""
from __future__ import annotations

import math
import threading
from typing import Iterable, Sequence

LabelValues = tuple[str, ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(str(v))}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return repr(float(x)) if not float(x).is_integer() else str(int(x))


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()):
        self.name, self.help, self.label_names = name, help, tuple(labels)
        self._lock = threading.Lock()

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()):
        super().__init__(name, help, labels)
        self._values: dict[LabelValues, float] = {}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + amount

    def value(self, *labels: str) -> float:
        with self._lock:
            return self._values.get(labels, 0.0)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return self.header() + [f"{self.name}{_labels(self.label_names, k)} {_number(v)}" for k, v in items]


class Gauge(_Metric):
    kind = "gauge"

    def __init__(self, name: str, help: str, labels: Sequence[str] = (), read=None):
        super().__init__(name, help, labels)
        self._values: dict[LabelValues, float] = {}
        self._read = read  # a callable giving the current value, for gauges sampled at scrape time

    def set(self, value: float, *labels: str) -> None:
        with self._lock:
            self._values[labels] = value

    def render(self) -> list[str]:
        if self._read is not None:
            self.set(float(self._read()))
        with self._lock:
            items = sorted(self._values.items())
        return self.header() + [f"{self.name}{_labels(self.label_names, k)} {_number(v)}" for k, v in items]


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: Iterable[float], labels: Sequence[str] = ()):
        super().__init__(name, help, labels)
        self.buckets = tuple(sorted(buckets)) + (math.inf,)
        self._counts: dict[LabelValues, list[int]] = {}
        self._sums: dict[LabelValues, float] = {}

    def observe(self, value: float, *labels: str) -> None:
        with self._lock:
            counts = self._counts.setdefault(labels, [0] * len(self.buckets))
            for i, upper in enumerate(self.buckets):
                if value <= upper:
                    counts[i] += 1  # cumulative buckets, as Prometheus expects
            self._sums[labels] = self._sums.get(labels, 0.0) + value

    def count(self, *labels: str) -> int:
        with self._lock:
            return self._counts.get(labels, [0] * len(self.buckets))[-1]

    def snapshot(self, *labels: str) -> dict[float, int]:
        """Cumulative count per upper bound, for tests and benchmarks."""
        with self._lock:
            return dict(zip(self.buckets, self._counts.get(labels, [0] * len(self.buckets))))

    def render(self) -> list[str]:
        with self._lock:
            items = sorted((k, list(v), self._sums[k]) for k, v in self._counts.items())
        lines = self.header()
        for labels, counts, total in items:
            for upper, count in zip(self.buckets, counts):
                le = 'le="' + _number(upper) + '"'
                lines.append(f"{self.name}_bucket{_labels(self.label_names, labels, le)} {count}")
            lines.append(f"{self.name}_sum{_labels(self.label_names, labels)} {_number(total)}")
            lines.append(f"{self.name}_count{_labels(self.label_names, labels)} {counts[-1]}")
        return lines


class ServerMetrics:
    """Everything ``GET /metrics`` reports for the QA server."""

    CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

    def __init__(self, model_id: str = ""):
        self.requests = Counter("omniformer_requests_total", "HTTP requests by endpoint and status code.",
                                ("endpoint", "status"))
        self.errors = Counter("omniformer_errors_total", "Requests answered with an error, by error type.", ("type",))
        self.latency = Histogram(
            "omniformer_request_duration_seconds", "Time from request to response, by endpoint.",
            (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0), ("endpoint",))
        self.batch_size = Histogram("omniformer_batch_size", "Questions answered per model call (micro-batching).",
                                    (1, 2, 4, 8, 16, 32, 64, 128))
        self.inference = Histogram("omniformer_inference_seconds", "Model time per micro-batch.",
                                   (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0))
        self.answers = Counter("omniformer_answers_total", "Questions answered, by how they were asked.", ("asked_by",))
        self.info = Gauge("omniformer_model_info", "The model being served (value is always 1).", ("model",))
        self.info.set(1, model_id)
        self._extra: list[_Metric] = []

    def add(self, metric: _Metric) -> _Metric:
        self._extra.append(metric)
        return metric

    def render(self) -> str:
        metrics = [self.requests, self.errors, self.latency, self.batch_size, self.inference, self.answers,
                   self.info, *self._extra]
        return "\n".join(line for m in metrics for line in m.render()) + "\n"
