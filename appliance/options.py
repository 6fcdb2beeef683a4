"""Ollama's model options: defaults, precedence, typing, and which ones force a reload.

Clients send `options` maps tuned for Ollama, and Modelfiles carry PARAMETER lines; both must be
typed and merged exactly as Ollama's `Options.FromMap` and `api.FormatParams` do (reference
§2.10, §6.3) so that the same request means the same thing here. The load-time subset decides
whether a loaded model can serve a request (§4.6, the scheduler's needsReload).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from appliance.errors import ApplianceError, BadRequest
from appliance.gocompat.jsontypes import json_kind
from appliance.gocompat.strconv import parse_bool, parse_int

log = logging.getLogger(__name__)

# Go kind of each option, as declared in api/types.go (Runner + Options).
_INT, _FLOAT, _BOOL, _STRINGS = "integer", "float32", "boolean", "array"
OPTION_KINDS: dict[str, str] = {
    # load-time (api.Runner)
    "num_ctx": _INT,
    "num_batch": _INT,
    "num_gpu": _INT,
    "main_gpu": _INT,
    "use_mmap": _BOOL,
    "num_thread": _INT,
    "draft_num_predict": _INT,
    # per request
    "num_keep": _INT,
    "seed": _INT,
    "num_predict": _INT,
    "top_k": _INT,
    "top_p": _FLOAT,
    "min_p": _FLOAT,
    "typical_p": _FLOAT,
    "repeat_last_n": _INT,
    "temperature": _FLOAT,
    "repeat_penalty": _FLOAT,
    "presence_penalty": _FLOAT,
    "frequency_penalty": _FLOAT,
    "stop": _STRINGS,
}

LOAD_TIME_OPTIONS = ("num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread")

# Modelfile PARAMETER keys Ollama accepts with only a warning (parser/parser.go).
DEPRECATED_PARAMETERS = frozenset(
    {
        "penalize_newline",
        "low_vram",
        "f16_kv",
        "logits_all",
        "vocab_only",
        "use_mlock",
        "mirostat",
        "mirostat_tau",
        "mirostat_eta",
    }
)

# Options Ollama once had and dropped; clients built for old releases (langchain's OllamaEmbeddings)
# still send them on every call. Ignored as Ollama does, with one warning per option per process.
REMOVED_OPTIONS = frozenset(
    {
        "mirostat",
        "mirostat_tau",
        "mirostat_eta",
        "tfs_z",
        "penalize_newline",
        "numa",
        "low_vram",
        "use_mlock",
        "f16_kv",
        "logits_all",
        "vocab_only",
    }
)

_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_FLOAT32_MAX = 3.4028234663852886e38
_GO_FLOAT = re.compile(
    r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf|infinity|nan)", re.IGNORECASE
)


class LoadKey(NamedTuple):
    """The load-time options a runner was (or would be) started with.

    Compare with `matches`, not `==`: Ollama's needsReload treats `num_gpu < 0` in a request as
    "any", lets an unset `use_mmap` inherit, and counts two automatic num_ctx/num_batch as equal.
    Unlike Ollama, a runner with at least the requested num_ctx serves the request (which keeps its
    own limit): Open WebUI sends num_ctx on a chat and none on its follow-up task, and would
    otherwise reload the model twice a turn.
    """

    num_ctx: int
    num_batch: int
    num_gpu: int
    main_gpu: int
    use_mmap: bool | None
    num_thread: int
    auto_num_ctx: bool = False
    auto_num_batch: bool = False

    def matches(self, loaded: LoadKey) -> bool:
        """Whether a runner loaded with `loaded` can serve a request that wants `self`."""
        return not self.differences(loaded)

    def differences(self, loaded: LoadKey) -> list[str]:
        """What keeps a runner loaded with `loaded` from serving `self`, as `option old -> new`."""
        out = []
        if self.num_ctx > loaded.num_ctx and not (self.auto_num_ctx and loaded.auto_num_ctx):
            out.append(f"num_ctx {loaded.num_ctx} -> {self.num_ctx}")
        if not (self.auto_num_batch and loaded.auto_num_batch) and (
            self.num_batch != loaded.num_batch
        ):
            out.append(f"num_batch {loaded.num_batch} -> {self.num_batch}")
        if self.num_gpu >= 0 and self.num_gpu != loaded.num_gpu:
            out.append(f"num_gpu {loaded.num_gpu} -> {self.num_gpu}")
        if self.use_mmap is not None and self.use_mmap != loaded.use_mmap:
            out.append(f"use_mmap {loaded.use_mmap} -> {self.use_mmap}")
        if self.main_gpu != loaded.main_gpu:
            out.append(f"main_gpu {loaded.main_gpu} -> {self.main_gpu}")
        if self.num_thread != loaded.num_thread:
            out.append(f"num_thread {loaded.num_thread} -> {self.num_thread}")
        return out


def _warn_removed_option(key: str, warned: set[str] | None) -> None:
    """Ollama's "invalid option provided" warning for an option Ollama removed: once per `warned`
    (the server's set, so once per process; without one, every time)."""
    if warned is not None:
        if key in warned:
            return
        warned.add(key)
    log.warning("invalid option provided: %s (removed from Ollama; ignored)", key)


def needs_reload(loaded: LoadKey, requested: LoadKey) -> bool:
    """Ollama's needsReload, options part: True when the loaded runner cannot serve `requested`
    (`LoadKey.differences` is the rule; `LoadSpec.reload_reasons` asks it too)."""
    return not requested.matches(loaded)


@dataclass(frozen=True)
class Options:
    """Every Ollama option with Ollama's defaults (api.DefaultOptions).

    `explicit` names the options a Modelfile or request set; the others are automatic.
    `num_ctx` 0 means "not decided yet": `resolve_options` fills in the server default.
    """

    # load-time
    num_ctx: int = 0
    num_batch: int = 512
    num_gpu: int = -1
    main_gpu: int = 0
    use_mmap: bool | None = None
    num_thread: int = 0
    draft_num_predict: int = 4
    # per request
    num_keep: int = 4
    seed: int = -1
    num_predict: int = -1
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    typical_p: float = 1.0
    repeat_last_n: int = 64
    temperature: float = 0.8
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: tuple[str, ...] = ()
    explicit: frozenset[str] = field(default=frozenset(), compare=False)

    def with_map(
        self, values: Mapping[str, Any] | None, *, warned: set[str] | None = None
    ) -> Options:
        """These options overlaid with a decoded JSON map, typed as Go's Options.FromMap does.

        Unknown keys are ignored and logged in one line per map (a client can send a million
        of them: one line each would flood the log); null values are skipped; a wrong type
        raises an ApplianceError with status 500 (Ollama's handleScheduleError) and Go's message.
        """
        if not values:
            return self
        changes: dict[str, Any] = {}
        unknown: list[str] = []
        for key, value in values.items():
            kind = OPTION_KINDS.get(key)
            if kind is None:
                if key in REMOVED_OPTIONS:
                    _warn_removed_option(key, warned)  # once per process, as users expect
                else:
                    unknown.append(key)
                continue
            if value is None:
                continue
            changes[key] = _coerce(key, kind, value)
        if unknown:
            shown = ", ".join(json.dumps(k[:40]) for k in unknown[:5])
            more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            log.warning("invalid option provided: %s%s", shown, more)
        if not changes:
            return self
        return dataclasses.replace(self, **changes, explicit=self.explicit.union(changes))

    def load_key(self, n_ctx_train: int | None = None) -> LoadKey:
        """The load-time options that decide reuse; num_ctx clamped to the model's train context."""
        num_ctx = self.num_ctx
        if n_ctx_train and n_ctx_train > 0:
            num_ctx = min(num_ctx, n_ctx_train)
        return LoadKey(
            num_ctx=num_ctx,
            num_batch=self.num_batch,
            num_gpu=self.num_gpu,
            main_gpu=self.main_gpu,
            use_mmap=self.use_mmap,
            num_thread=self.num_thread,
            auto_num_ctx="num_ctx" not in self.explicit,
            auto_num_batch="num_batch" not in self.explicit,
        )

    def as_map(self) -> dict[str, Any]:
        """The options as a JSON-ready map (Go field names), for logs and debugging."""
        out = {name: getattr(self, name) for name in OPTION_KINDS}
        out["stop"] = list(self.stop)
        return out


def resolve_options(
    model_params: Mapping[str, Any] | None,
    request_options: Mapping[str, Any] | None,
    *,
    default_num_ctx: int,
    warned: set[str] | None = None,
) -> Options:
    """Options for one request, lowest precedence first: defaults (with the server's num_ctx),
    the model's Modelfile parameters, the request's `options`. `warned` holds the removed options
    already warned about (owned by the server, so each is said once per process)."""
    if request_options is not None and not isinstance(request_options, Mapping):
        raise BadRequest(
            f"json: cannot unmarshal {json_kind(request_options)} into Go struct field "
            ".options of type map[string]interface {}"
        )
    base = Options(num_ctx=default_num_ctx)
    options = base.with_map(model_params, warned=warned).with_map(request_options, warned=warned)
    if request_options and request_options.get("stop") is not None:
        options = dataclasses.replace(options, stop=_bounded_stops(options.stop))
    return options


MAX_STOPS = 64
MAX_STOP_CHARS = 1024
"""Bounds on a request's distinct stop sequences. Ollama has none, but every generated token is
checked against every stop (and held back while it could begin one) inside the batch step that
serves all clients: 10,000 stops of 1,000 characters would stall every stream on the model."""


def _bounded_stops(stops: tuple[str, ...]) -> tuple[str, ...]:
    """The request's stops without repeats (same matches); 400 past the bounds."""
    unique = tuple(dict.fromkeys(stops))
    if len(unique) > MAX_STOPS:
        raise BadRequest(f"too many stop sequences: {len(unique)} (at most {MAX_STOPS})")
    longest = max((len(s) for s in unique), default=0)
    if longest > MAX_STOP_CHARS:
        raise BadRequest(f"stop sequence too long: {longest} characters (at most {MAX_STOP_CHARS})")
    return unique


OPEN_ENDED_PREDICT_CONTEXTS = 10
"""Ollama's boundedNumPredict: generation stops after at most 10 context windows of tokens."""


def bounded_num_predict(num_predict: int, num_ctx: int) -> int:
    """Ollama's boundedNumPredict: an open-ended (negative) or larger `num_predict` becomes
    10 x num_ctx, so every sequence has a finite budget."""
    if num_ctx <= 0:
        return num_predict
    limit = OPEN_ENDED_PREDICT_CONTEXTS * num_ctx
    return limit if num_predict < 0 or num_predict > limit else num_predict


def bounded_for_context(options: Options, num_ctx: int) -> Options:
    """Per-request options that size something, bounded by the context the slot really has.

    A `num_predict` above 10 x num_ctx is cut to that (Ollama's boundedNumPredict); a negative
    one stays open-ended, since the engine (no context shift) already stops a sequence when
    its context is full, sooner than Ollama's bound. Ollama has no rule for the others, so
    they are bounded by what the context can use: `num_keep` (-1 keeps the whole prompt) and
    `repeat_last_n` (-1 means the context; llama.cpp allocates a ring of that many tokens, so
    a huge value would be an allocation of any size) at most `num_ctx`.
    """
    changes: dict[str, Any] = {}
    num_predict = options.num_predict
    if num_predict > 0:  # -1 stays open-ended: the engine ends it when the context is full
        num_predict = bounded_num_predict(num_predict, num_ctx)
    if num_predict != options.num_predict:
        changes["num_predict"] = num_predict
    for key in ("num_keep", "repeat_last_n"):
        value = getattr(options, key)
        bounded = max(-1, min(value, num_ctx))
        if bounded != value:
            changes[key] = bounded
    return dataclasses.replace(options, **changes) if changes else options


def _type_error(key: str, kind: str) -> ApplianceError:
    return ApplianceError(f"option {json.dumps(key)} must be of type {kind}", status=500)


def _coerce(key: str, kind: str, value: Any) -> Any:
    if kind == _INT:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _type_error(key, kind)
        if isinstance(value, float):
            if not math.isfinite(value):
                raise _type_error(key, kind)
            value = math.trunc(value)  # Go: int64(float64) truncates toward zero
        return max(_INT64_MIN, min(_INT64_MAX, int(value)))
    if kind == _FLOAT:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _type_error(key, kind)
        return float(value)
    if kind == _BOOL:
        if not isinstance(value, bool):
            raise _type_error(key, kind)
        return value
    # array of strings; a lone string is accepted too (clients, and OpenAI's `stop`, send one)
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list):
        raise _type_error(key, kind)
    if not all(isinstance(item, str) for item in value):
        raise ApplianceError(f"option {json.dumps(key)} must be of an array of strings", status=500)
    return tuple(value)


def parse_modelfile_parameter(key: str, value_text: str) -> Any:
    """One Modelfile `PARAMETER key value`, typed like Go's api.FormatParams.

    Returns the typed value (`stop` as a one-item list), or None for a deprecated key (logged).
    Raises BadRequest with Ollama's message for an unknown key or a badly typed value.
    """
    if key in DEPRECATED_PARAMETERS:
        log.warning("parameter %s is deprecated", key)
        return None
    kind = OPTION_KINDS.get(key)
    if kind is None:
        raise BadRequest(f"unknown parameter '{key}'")
    shown = f"[{value_text}]"  # Go prints the []string of values with %s
    if kind == _INT:
        number = parse_int(value_text)
        if number is None:
            raise BadRequest(f"invalid int value {shown}")
        return number
    if kind == _FLOAT:
        if not _GO_FLOAT.fullmatch(value_text):
            raise BadRequest(f"invalid float value {shown}")
        number = float(value_text)
        if math.isfinite(number) and abs(number) > _FLOAT32_MAX:  # ParseFloat(.., 32) range
            raise BadRequest(f"invalid float value {shown}")
        return number
    if kind == _BOOL:
        parsed = parse_bool(value_text)
        if parsed is None:
            raise BadRequest(f"invalid bool value {shown}")
        return parsed
    return [value_text]


def format_params(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """All PARAMETER lines of a Modelfile as the typed `parameters` map of /api/create.

    Repeated `stop` lines accumulate; for other keys the last line wins; deprecated keys vanish.
    """
    params: dict[str, Any] = {}
    for key, value_text in pairs:
        value = parse_modelfile_parameter(key, value_text)
        if value is None:
            continue
        if isinstance(value, list) and isinstance(params.get(key), list):
            params[key] = params[key] + value
        else:
            params[key] = value
    return params
