"""Server settings: parsed and validated from ``initializationOptions`` and ``workspace/didChangeConfiguration``.

Editors send settings as JSON in camelCase (``maxTokens``) and sometimes wrapped in a ``{"remask": {...}}``
section; both spellings and both shapes are accepted. A bad value raises ``ConfigError`` naming the key, and the
caller keeps the previous configuration, so a typo in an editor's settings never leaves the server half-configured.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from assistant.api import Settings

SECTION = "remask"
MIN_CONFIDENCE = 0.3
_DEVICE = re.compile(r"^(cpu|mps|cuda(:\d+)?|xpu(:\d+)?)$")


class ConfigError(ValueError):
    """An invalid setting; the message names the key and is shown to the user as it is."""


@dataclass(frozen=True)
class Features:
    """Which features are on. Diagnostics are off by default: hints on every keystroke are noisy."""

    inline_completion: bool = True
    completion: bool = True
    code_actions: bool = True
    diagnostics: bool = False


@dataclass(frozen=True)
class ServerConfig:
    model: str | None = None  # folder, "default", or "random:PRESET"
    device: str = "cpu"
    adapter: str | None = None  # a LoRA folder (remask train adapt) for ``model``, merged at load
    block_size: int | None = None  # None: the model's
    threshold: float | None = 0.9  # None with steps: a fixed schedule
    steps: int | None = None
    temperature: float = 0.0
    max_tokens: int = 128  # code actions
    inline_max_tokens: int = 32  # ghost text: short keeps it fast
    candidates: int = 3  # "Regenerate" decodes this many versions as one batch and applies the best
    debounce_ms: int = 150  # automatic inline/completion requests wait this long first
    diagnostics_debounce_ms: int = 750
    diagnostics_threshold: float = 0.05  # a token below this probability gets a hint
    progress_delay_ms: int = 300  # only operations running longer than this show a progress bar
    # Ghost text whose mean token confidence is below this is not shown (0: show everything). The default is
    # measured with benchmarks/measure_min_confidence.py on the built-in model (BENCHMARKS.md).
    min_confidence: float = MIN_CONFIDENCE
    # Dream/DreamOn only: their approximate dual cache, a full forward every N steps (null: exact, the default)
    dual_cache: int | None = None
    features: Features = field(default_factory=Features)

    def settings(self, *, inline: bool = False) -> Settings:
        """The engine's decoding settings for one request."""
        return Settings(block_size=self.block_size, threshold=None if self.steps else self.threshold,
                        steps=self.steps, temperature=self.temperature,
                        max_new_tokens=self.inline_max_tokens if inline else self.max_tokens,
                        candidates=self.candidates, repair_threshold=self.diagnostics_threshold,
                        dual_cache=self.dual_cache)

    def as_json(self) -> dict[str, Any]:
        """The configuration in the editor's spelling (for ``remask/status``)."""
        out = {_CAMEL[f.name]: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "features"}
        out["features"] = {_camel(f.name): getattr(self.features, f.name) for f in dataclasses.fields(Features)}
        return out

    def updated(self, raw: Any) -> ServerConfig:
        """A new config with ``raw`` (editor JSON) applied on top of this one; raises ConfigError."""
        if raw is None:
            return self
        if not isinstance(raw, dict):
            raise ConfigError(f"settings must be a JSON object, got {type(raw).__name__}")
        if isinstance(raw.get(SECTION), dict):
            raw = raw[SECTION]
        changes: dict[str, Any] = {}
        feats: dict[str, Any] = {}
        for key, value in raw.items():
            name = _SNAKE.get(key, key)
            if name == "features":
                if value is None:
                    continue
                if not isinstance(value, dict):
                    raise ConfigError("features must be an object like {\"diagnostics\": true}")
                for fk, fv in value.items():
                    fname = _SNAKE.get(fk, fk)
                    if fname not in _FEATURE_NAMES:
                        raise ConfigError(f"unknown feature {fk!r}; known: {', '.join(sorted(_FEATURE_CAMEL))}")
                    if not isinstance(fv, bool):
                        raise ConfigError(f"features.{fk} must be true or false, got {fv!r}")
                    feats[fname] = fv
                continue
            if name not in _VALIDATORS:
                continue  # other tools' settings may share the section; ignore rather than fail
            changes[name] = _VALIDATORS[name](key, value)
        new = dataclasses.replace(self, **changes)
        if feats:
            new = dataclasses.replace(new, features=dataclasses.replace(new.features, **feats))
        return new


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.capitalize() for p in rest)


_CAMEL = {f.name: _camel(f.name) for f in dataclasses.fields(ServerConfig)}
_SNAKE = {c: s for s, c in _CAMEL.items()}
_FEATURE_NAMES = {f.name for f in dataclasses.fields(Features)}
_FEATURE_CAMEL = {_camel(n) for n in _FEATURE_NAMES}
_SNAKE.update({_camel(n): n for n in _FEATURE_NAMES})


def _int(lo: int, hi: int, nullable: bool = False):
    def check(key: str, v: Any) -> int | None:
        if v is None and nullable:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            extra = " or null" if nullable else ""
            raise ConfigError(f"{key} must be an integer from {lo} to {hi}{extra}, got {v!r}")
        return v
    return check


def _float(lo: float, hi: float, nullable: bool = False, lo_open: bool = False):
    def check(key: str, v: Any) -> float | None:
        if v is None and nullable:
            return None
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and v <= hi and (v > lo if lo_open else v >= lo)
        if not ok:
            bound = f"({lo}, {hi}]" if lo_open else f"[{lo}, {hi}]"
            raise ConfigError(f"{key} must be a number in {bound}{' or null' if nullable else ''}, got {v!r}")
        return float(v)
    return check


def _model(key: str, v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str) or not v.strip():
        raise ConfigError(f"{key} must be a model folder, 'default' or 'random:PRESET', got {v!r}")
    return v.strip()


def _adapter(key: str, v: Any) -> str | None:
    if v is None or v == "":
        return None
    if not isinstance(v, str) or not v.strip():
        raise ConfigError(f"{key} must be an adapter folder (made by `remask train adapt`) or null, got {v!r}")
    return v.strip()


def _device(key: str, v: Any) -> str:
    if not isinstance(v, str) or not _DEVICE.match(v):
        raise ConfigError(f"{key} must be 'cpu', 'cuda', 'cuda:N' or 'mps', got {v!r}")
    return v


_VALIDATORS = {
    "model": _model,
    "device": _device,
    "adapter": _adapter,
    "block_size": _int(1, 1024, nullable=True),
    "threshold": _float(0.0, 1.0, nullable=True, lo_open=True),
    "steps": _int(1, 1024, nullable=True),
    "temperature": _float(0.0, 10.0),
    "max_tokens": _int(1, 8192),
    "inline_max_tokens": _int(1, 1024),
    "candidates": _int(1, 16),
    "debounce_ms": _int(0, 10_000),
    "diagnostics_debounce_ms": _int(0, 60_000),
    "diagnostics_threshold": _float(0.0, 1.0),
    "progress_delay_ms": _int(0, 60_000),
    "min_confidence": _float(0.0, 1.0),
    "dual_cache": _int(1, 1024, nullable=True),
}
