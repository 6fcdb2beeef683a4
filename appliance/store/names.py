"""Model names as Ollama parses them (types/model/name.go): `[scheme://][host/][namespace/]model[:tag]`.

A valid name is also a safe relative path: every part is ASCII alphanumerics, `_`, `-` and a few
part-specific characters, starts with an alphanumeric or `_` (so never `.` or `..`), and has a
bounded length. Anything else is `InvalidName`, a 400.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from appliance.errors import BadRequest

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
DEFAULT_SCHEME = "https"

MAX_NAME_CHARS = 350 + 3 * 80 + 3 + 16  # host + ns/model/tag + separators + a scheme
MAX_FILE_NAME = 255
"""NAME_MAX on Linux, macOS and Windows: every part of a name becomes one path component."""
_HOST, _NAMESPACE, _MODEL, _TAG = range(4)
_ALNUM_ = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


class InvalidName(BadRequest):
    """A name that does not parse into four valid parts."""

    def __init__(self, message: str = "invalid model name") -> None:
        super().__init__(message)


@dataclass(frozen=True)
class ModelName:
    """A fully qualified model name; compare with `same_as` for Ollama's case-insensitive match."""

    host: str
    namespace: str
    model: str
    tag: str
    scheme: str = field(default=DEFAULT_SCHEME, compare=False)

    def parts(self) -> tuple[str, str, str, str]:
        return (self.host, self.namespace, self.model, self.tag)

    def display_shortest(self) -> str:
        """`model:tag`, `ns/model:tag` or `host/ns/model:tag`, as `ollama list` shows it."""
        if self.host.lower() != DEFAULT_HOST:
            prefix = f"{self.host}/{self.namespace}/"
        elif self.namespace.lower() != DEFAULT_NAMESPACE:
            prefix = f"{self.namespace}/"
        else:
            prefix = ""
        return f"{prefix}{self.model}:{self.tag}"

    def full(self) -> str:
        """`host/ns/model:tag`, Ollama's `Name.String()`."""
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    def key(self) -> tuple[str, str, str, str]:
        """The case-folded identity two spellings of one model share."""
        return tuple(p.lower() for p in self.parts())  # type: ignore[return-value]

    def check_storable(self) -> None:
        """400 for a name that parses (Ollama allows a 350-character host) but cannot be a path:
        a part longer than a file name may be would fail later with ENAMETOOLONG."""
        for label, part in zip(("host", "namespace", "model", "tag"), self.parts(), strict=True):
            if len(part.encode()) > MAX_FILE_NAME:
                raise InvalidName(
                    f"invalid model name: the {label} part is {len(part)} characters, "
                    f"more than the {MAX_FILE_NAME} a file name may have"
                )

    def check_registry_host(self) -> None:
        """400 for a host no registry can have (checked before a pull or push dials it): a DNS
        name over 253 characters or with a label over 63, or a port outside 1..65535."""
        host, _, port = self.host.rpartition(":") if ":" in self.host else (self.host, "", "")
        problem = ""
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            problem = f"port {port} is not between 1 and 65535"
        elif len(host) > 253 or any(len(label) > 63 for label in host.split(".")):
            problem = "a host name has at most 253 characters and 63 between dots"
        if problem:
            raise InvalidName(f"invalid model name: {problem}")

    def same_as(self, other: ModelName) -> bool:
        return self.key() == other.key()

    def __str__(self) -> str:
        return self.display_shortest()


def _cut_last(text: str, sep: str) -> tuple[str, str, bool]:
    """Ollama's `cutPromised`: split at the last `sep`; an empty side poisons the name."""
    i = text.rfind(sep)
    if i < 0:
        return text, "", False
    return text[:i] or "\x00", text[i + 1 :] or "\x00", True


def _valid_part(kind: int, part: str) -> bool:
    limit = 350 if kind == _HOST else 80
    if not 1 <= len(part) <= limit or part[0] not in _ALNUM_:
        return False
    for ch in part[1:]:
        if ch in _ALNUM_ or ch in "_-":
            continue
        if ch == "." and kind != _NAMESPACE:
            continue
        if ch == ":" and kind == _HOST:
            continue
        return False
    return True


def parse_model_name(text: str, *, message: str = "invalid model name") -> ModelName:
    """Parse and validate `text`, filling Ollama's defaults; `InvalidName(message)` when invalid."""
    if not isinstance(text, str):
        raise InvalidName(message)
    text = text.strip()
    if not text or len(text) > MAX_NAME_CHARS:
        raise InvalidName(message)
    host = namespace = tag = ""
    scheme = DEFAULT_SCHEME
    rest = text
    if rest.rfind(":") > rest.rfind("/"):
        rest, tag, _ = _cut_last(rest, ":")
    rest, model, cut = _cut_last(rest, "/")
    if cut:
        rest, namespace, cut = _cut_last(rest, "/")
        if cut:
            given_scheme, sep, host = rest.partition("://")
            if sep:
                scheme = given_scheme
            else:
                host = given_scheme
        else:
            namespace = rest
    else:
        model = rest
    name = ModelName(
        host or DEFAULT_HOST,
        namespace or DEFAULT_NAMESPACE,
        model,
        tag or DEFAULT_TAG,
        scheme=scheme,
    )
    if scheme not in ("http", "https"):
        raise InvalidName(message)
    for kind, part in enumerate(name.parts()):
        if not _valid_part(kind, part):
            raise InvalidName(message)
    return name


def name_from_relpath(parts: tuple[str, ...]) -> ModelName | None:
    """The name a manifest file at `manifests/<host>/<ns>/<model>/<tag>` stands for, or None."""
    if len(parts) != 4:
        return None
    name = ModelName(*parts)
    for kind, part in enumerate(name.parts()):
        if not _valid_part(kind, part):
            return None
    return name
