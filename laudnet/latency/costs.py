"""The learned part of a calibrated device profile: per operator kind, how its time is made.

A calibrated profile prices every primitive operation of the sparse engine
(:mod:`laudnet.sparse.plan`) as a weighted sum of a few features, each a time in seconds computed
from the operation's sizes and the profile's hardware parameters (:mod:`.calibrated.pricing` computes them):

* ``launch``: the hardware's ``launch_time_s`` (a fixed cost per call);
* ``analytic``: the analytic operator model (:mod:`.analytic.operators`) on the fitted hardware;
* ``compute``: multiply-accumulates at the peak rate;
* ``inputs`` / ``weights`` / ``outputs``: the words read, the weights read, the words written, at
  the DRAM bandwidth;
* ``rows``: one clock cycle per indexed row (gathers and scatters).

Without calibration the weights are :data:`PRIOR`: the analytic model alone. Calibration fits them
per kind (nn-Meter fits one regressor per kernel type for the same reason: one analytic model does
not describe every kernel of a CPU's eager runtime). Four pseudo-kinds price what runs around
the operations (Python for the torch engine; the session and small index nodes for ONNX Runtime),
in multiples of ``launch``: ``glue`` per operation, ``block`` per residual block call,
``gathering_block`` more per call of a block that gathers positions or channels, ``model`` per
model call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ..sparse.kernels import OP_KINDS
from ..errors import UsageError

FEATURES: tuple[str, ...] = ("launch", "analytic", "compute", "inputs", "weights", "outputs", "rows")
OVERHEAD_KINDS: tuple[str, ...] = ("glue", "block", "gathering_block", "model")
PRIOR: dict[str, float] = {"launch": 0.0, "analytic": 1.0, "compute": 0.0, "inputs": 0.0, "weights": 0.0,
                           "outputs": 0.0, "rows": 0.0}
DEVICES: tuple[str, ...] = ("cpu", "cuda")
# The engine backends a profile can price (``laudnet.sparse.convert``'s names); ONNX Runtime runs on the CPU.
BACKENDS: tuple[str, ...] = ("torch", "onnxruntime")


def check_backend(backend: str, device: str, action: str) -> None:
    """A clear error unless ``backend`` is one of :data:`BACKENDS` that runs on ``device`` (ONNX Runtime
    runs on the CPU only); ``action`` says what was asked (``price``, ``calibrate``, ``measure``)."""
    if backend not in BACKENDS:
        raise UsageError(f"cannot {action} backend {backend!r}: the backend must be one of {', '.join(BACKENDS)}")
    if backend == "onnxruntime" and device != "cpu":
        raise UsageError(f"cannot {action} backend onnxruntime on {device}: onnxruntime runs on the cpu "
                         "(the torch backend runs on either)")


def kind_features(kind: str) -> tuple[str, ...]:
    """The features that price ``kind`` (the overhead kinds have ``launch`` only)."""
    return ("launch",) if kind in OVERHEAD_KINDS else FEATURES


def prior_coefficients(kind: str) -> dict[str, float]:
    """What an uncalibrated profile uses: the analytic model, no overhead."""
    return {name: (PRIOR[name] if kind in OP_KINDS else 0.0) for name in kind_features(kind)}


@dataclass(frozen=True)
class EngineCosts:
    """How the sparse engine's operations cost on one device at one thread count, run by one backend.

    ``coefficients`` holds, per kind, the weight of each of its features (a tuple of pairs so
    the profile stays hashable); kinds or features left out take their prior. ``backend``: the
    engine that was measured (profiles written before it was recorded priced ``torch``).
    """

    device: str
    threads: int
    coefficients: tuple[tuple[str, tuple[tuple[str, float], ...]], ...] = ()
    backend: str = "torch"

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise UsageError(f"engine device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1:
            raise UsageError(f"engine threads must be a positive integer, got {self.threads!r}")
        check_backend(self.backend, self.device, "price")
        known = OP_KINDS + OVERHEAD_KINDS
        for kind, values in self.coefficients:
            if kind not in known:
                raise UsageError(f"engine costs: unknown kind {kind!r}; known kinds are {', '.join(known)}")
            for name, value in values:
                if name not in kind_features(kind):
                    raise UsageError(
                        f"engine costs of {kind}: unknown feature {name!r}; known: {', '.join(kind_features(kind))}"
                    )
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                    raise UsageError(f"engine costs of {kind}: {name} must be a number >= 0, got {value!r}")

    def of(self, kind: str) -> dict[str, float]:
        """The coefficients of ``kind``, with priors where none were fitted."""
        values = prior_coefficients(kind)
        values.update(dict(self.table().get(kind, ())))
        return values

    def table(self) -> dict[str, tuple[tuple[str, float], ...]]:
        return dict(self.coefficients)

    @classmethod
    def build(cls, device: str, threads: int, coefficients: Mapping[str, Mapping[str, float]],
              backend: str = "torch") -> "EngineCosts":
        """From a mapping kind → feature → weight (the YAML form)."""
        if not isinstance(coefficients, Mapping):
            raise UsageError(f"engine costs must map kinds to their feature weights, got {coefficients!r}")
        pairs = []
        for kind, values in coefficients.items():
            if not isinstance(values, Mapping):
                raise UsageError(f"engine costs of {kind}: expected a mapping of feature weights, got {values!r}")
            pairs.append((str(kind), tuple((str(k), _number(kind, k, v)) for k, v in values.items())))
        return cls(device, threads, tuple(pairs), backend)

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "threads": self.threads,
            "backend": self.backend,
            "costs": {kind: dict(values) for kind, values in self.coefficients},
        }


def _number(kind: str, name: str, value: Any) -> float:
    """Accept numbers written as text (YAML reads ``1e-6`` as a string)."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise UsageError(f"engine costs of {kind}: {name} must be a number, got {value!r}") from None
    return value
