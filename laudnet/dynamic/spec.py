"""Per-stage dynamic configuration: mode, spatial granularity S and channel granularity G.

One vocabulary everywhere in laudnet:

* ``mode`` is one of :data:`MODES`;
* ``S`` (spatial granularity) is the side, in output pixels, of the square patch one
  spatial-mask cell switches on or off;
* ``G`` (channel granularity) is the number of consecutive bottleneck channels one
  channel-mask entry switches on or off.

User input may give one value for every stage or one per stage, as a sequence or as a
dash-separated string (``"spatial-spatial-channel-static"``, ``"4-4-2-1"``).

Vision transformers add combined modes, one per block: the parts ``spatial`` (token skipping),
``channel`` (head skipping) and ``layer`` (skipping the attention and MLP sub-blocks) joined with
``+`` (``"spatial+channel+layer"``; ``token`` and ``head`` are aliases of ``spatial`` and
``channel`` everywhere). A combination is written in canonical order, ``spatial+channel`` is
``both``; only models whose family accepts a combination build it (CNNs accept :data:`MODES`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union
from ..errors import UsageError

MODES: tuple[str, ...] = ("static", "spatial", "channel", "layer", "both")
# Combined modes (vision transformers): the canonical '+'-joined parts beyond MODES.
COMBINED_MODES: tuple[str, ...] = ("spatial+layer", "channel+layer", "spatial+channel+layer")
MODE_ALIASES: dict[str, str] = {"token": "spatial", "head": "channel"}
MODE_PARTS: tuple[str, ...] = ("spatial", "channel", "layer")
NUM_STAGES = 4

PerStage = Union[str, int, Sequence[Union[str, int]]]


@dataclass(frozen=True)
class StageSpec:
    """Dynamic configuration of the residual blocks of one stage."""

    mode: str = "static"
    spatial_granularity: int = 1
    channel_granularity: int = 1

    @property
    def has_spatial(self) -> bool:
        """Whether blocks carry a spatial masker (``layer`` is spatial with one cell)."""
        return self.mode in ("spatial", "layer", "both")

    @property
    def has_channel(self) -> bool:
        """Whether blocks carry a channel masker."""
        return self.mode in ("channel", "both")

    @property
    def is_dynamic(self) -> bool:
        return self.mode != "static"


@dataclass(frozen=True)
class DynamicSpec:
    """The dynamic configuration of a whole backbone, one :class:`StageSpec` per stage."""

    stages: tuple[StageSpec, ...]

    @classmethod
    def build(
        cls,
        mode: PerStage = "static",
        spatial_granularity: PerStage = 1,
        channel_granularity: PerStage = 1,
        num_stages: int = NUM_STAGES,
        dash_combinations: bool = False,
    ) -> "DynamicSpec":
        """Parse user-facing values (one for all stages or one per stage) into a spec.

        ``dash_combinations``: a dash-separated mode of distinct parts whose count is neither 1 nor
        ``num_stages`` is one combined mode for every stage (``"spatial-channel-layer"``; ViTs).
        """
        if dash_combinations:
            mode = _dash_combination(mode, num_stages)
        modes = parse_per_stage(mode, num_stages, "mode", _parse_mode)
        sizes = parse_per_stage(spatial_granularity, num_stages, "spatial_granularity", _parse_positive)
        groups = parse_per_stage(channel_granularity, num_stages, "channel_granularity", _parse_positive)
        return cls(tuple(StageSpec(m, s, g) for m, s, g in zip(modes, sizes, groups)))

    @property
    def modes(self) -> tuple[str, ...]:
        return tuple(s.mode for s in self.stages)

    @property
    def is_static(self) -> bool:
        return not any(s.is_dynamic for s in self.stages)

    def describe(self) -> str:
        """A compact, human-readable form such as ``spatial(S=4-4-2-1)``."""
        modes = "-".join(self.modes)
        parts = [modes]
        if any(s.mode in ("spatial", "both") for s in self.stages):
            parts.append("S=" + "-".join(str(s.spatial_granularity) for s in self.stages))
        if any(s.has_channel for s in self.stages):
            parts.append("G=" + "-".join(str(s.channel_granularity) for s in self.stages))
        return " ".join(parts)

    def to_dict(self) -> dict[str, list]:
        """Plain-data form, the inverse of ``DynamicSpec.build(**d)``."""
        return {
            "mode": [s.mode for s in self.stages],
            "spatial_granularity": [s.spatial_granularity for s in self.stages],
            "channel_granularity": [s.channel_granularity for s in self.stages],
        }


def parse_per_stage(value: PerStage, num_stages: int, name: str, convert) -> tuple:
    """Expand ``value`` (one item, a sequence, or a dash-separated string) to ``num_stages`` items.

    Raises ``ValueError`` naming ``name`` and what is accepted when the count is wrong or an
    item does not convert.
    """
    if isinstance(value, str):
        items: list = value.split("-") if "-" in value else [value]
    elif isinstance(value, (int, float)):
        items = [value]
    elif isinstance(value, Sequence):
        items = list(value)
    else:
        raise UsageError(
            f"{name}: expected one value or {num_stages} values (a list or a dash-separated "
            f"string), got {value!r}"
        )
    if len(items) == 1:
        items = items * num_stages
    if len(items) != num_stages:
        raise UsageError(
            f"{name}: expected one value or {num_stages} values (one per stage), got "
            f"{len(items)} in {value!r}"
        )
    return tuple(convert(item, name) for item in items)


def mode_parts(mode: str) -> frozenset[str]:
    """The parts of a canonical mode: ``"both"`` is ``{"spatial", "channel"}``, ``"static"`` none."""
    if mode == "static":
        return frozenset()
    if mode == "both":
        return frozenset(("spatial", "channel"))
    return frozenset(mode.split("+"))


def _parse_mode(item, name: str) -> str:
    words = [MODE_ALIASES.get(w.strip(), w.strip()) for w in str(item).strip().lower().split("+")]
    if len(words) == 1 and words[0] in MODES:
        return words[0]
    if len(words) > 1 and all(w in MODE_PARTS or w == "both" for w in words):
        parts = set().union(*(mode_parts(w) for w in words))
        return "both" if parts == {"spatial", "channel"} else "+".join(p for p in MODE_PARTS if p in parts)
    raise UsageError(f"{name}: unknown mode {item!r}; accepted modes are {', '.join(MODES)} "
                     f"(or token / head, and for ViTs {', '.join(COMBINED_MODES)})")


def _dash_combination(mode: PerStage, num_stages: int) -> PerStage:
    """``"spatial-channel-layer"`` as ``"spatial+channel+layer"`` when it cannot be one mode per stage."""
    if not isinstance(mode, str) or "-" not in mode:
        return mode
    words = [MODE_ALIASES.get(w.strip().lower(), w.strip().lower()) for w in mode.split("-")]
    if len(words) in (1, num_stages) or len(set(words)) != len(words) or not set(words) <= set(MODE_PARTS) | {"both"}:
        return mode
    return "+".join(words)


def _parse_positive(item, name: str) -> int:
    text = str(item).strip()
    if isinstance(item, bool) or not text.isdigit() or int(text) < 1:
        raise UsageError(f"{name}: expected a positive integer, got {item!r}")
    return int(text)
