"""What the service knows about a stored model before (and without) loading it.

Reading a GGUF header parses the whole vocabulary (0.15 s for 262k tokens), so it happens in a
worker thread, once per blob: blobs are content-addressed, so a path's header never changes.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import trio

from appliance.errors import ApplianceError, BadRequest, NotFound
from appliance.prompting.prompts import PromptTemplate, cached_template_capabilities
from appliance.serving.backend import LoadSpec
from appliance.store.store import GGUFInfoCache, model_capabilities
from engine.gguf import GGUFInfo

if TYPE_CHECKING:
    from appliance.options import Options
    from appliance.store.store import LocalModel

log = logging.getLogger(__name__)


KV_BLOCK = {"q8_0": 32, "q4_0": 32}  # a quantized row holds whole blocks of this many values


def _kv_type_for(info: GGUFInfo, wanted: str) -> str:
    """`wanted`, or f16 when the model's head size is not a whole number of quantized blocks
    (llama.cpp would refuse to create the context)."""
    block = KV_BLOCK.get(wanted)
    if block is None:
        return wanted
    dims = [d for d in (info.key_length, info.value_length) if d]
    if dims and all(d % block == 0 for d in dims):
        return wanted
    return "f16"


class _TemplateFacts(Protocol):
    """What a prompt template needs from the loaded model (a scheduler lease has it)."""

    @property
    def chat_template(self) -> str | None: ...
    @property
    def bos_text(self) -> str: ...
    @property
    def eos_text(self) -> str: ...


@dataclass(frozen=True)
class SlotPolicy:
    """How many parallel slots a model gets and the context each one has by default."""

    num_parallel: int  # >= 1
    default_num_ctx: int
    flash_attention: bool | None = None  # OLLAMA_FLASH_ATTENTION; None lets llama.cpp decide
    kv_cache_type: str = ""  # OLLAMA_KV_CACHE_TYPE: "" (f16), "q8_0", "q4_0"
    memory_budget: int = 0  # bytes a load may use; 0: the machine's physical memory
    # Host RAM a generation model may fill with saved prompt states (LLM_APPLIANCE_CACHE_RAM; 0
    # with the prompt cache off): part of what its load costs against the budget.
    prompt_states_bytes: int = 0

    def kv_type(self) -> str:
        """The KV cache type to use: a quantized cache needs flash attention, so with flash
        attention turned off it falls back to f16 (warned once at start by `server`)."""
        kind = self.kv_cache_type or "f16"
        if kind != "f16" and self.flash_attention is False:
            return "f16"
        return kind


MAX_TOTAL_CTX = (1 << 31) - 1
"""llama.cpp keeps the context size (all slots together) in a uint32; stay well inside it."""


def physical_memory() -> int:
    """Bytes of RAM in the machine, or 0 when the platform cannot tell."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


class Catalog:
    """What serving knows of stored models: GGUF headers (the store's one bounded cache), the
    capabilities the routes check, parsed prompt templates, and the load plan of a request."""

    TEMPLATE_CACHE = 32  # parsed prompt templates kept (one per model and TEMPLATE text)

    def __init__(
        self,
        policy: SlotPolicy,
        infos: GGUFInfoCache | None = None,
        template_caps: Callable[[str | None], tuple[str, ...]] | None = None,
    ) -> None:
        """`infos` and `template_caps` are the store's caches (a test may leave them out)."""
        self.policy = policy
        self.infos = infos if infos is not None else GGUFInfoCache()
        self._template_caps = template_caps or cached_template_capabilities(self.TEMPLATE_CACHE)
        self._kv_fallbacks: set[Path] = set()  # model files whose KV-type fallback was logged
        self._templates: OrderedDict[tuple[str, str, str], PromptTemplate] = OrderedDict()

    async def info(self, path: Path) -> GGUFInfo:
        """The GGUF header of `path`; 404 when the file is gone, 500 when it is not GGUF."""
        cached = self.infos.peek(path)
        if cached is not None:
            return cached
        try:  # the cache reads one header at a time and none twice
            return await trio.to_thread.run_sync(self.infos.get, path)
        except FileNotFoundError:
            raise NotFound(f'model "{path.name}" not found, try pulling it first') from None
        except ValueError as exc:
            raise ApplianceError(f"unable to read model file: {exc}") from None

    async def capabilities(self, model: LocalModel) -> set[str]:
        """`store.derive_capabilities` for `model`: the same answer `/api/show` gives."""
        info = await self.info(model.model_path) if model.model_path is not None else None
        return set(model_capabilities(model, info, self._template_caps(model.template)))

    async def prompt_template(
        self, model: LocalModel, facts: _TemplateFacts, override: str | None = None
    ) -> PromptTemplate:
        """`model`'s parsed prompt template, built once per model digest and TEMPLATE text (the
        least recently used of `TEMPLATE_CACHE` goes); a request's own `template` is not kept.
        A name deleted or re-created with another template has another digest, so it never
        gets a template parsed for what the name held before."""
        key = (str(model.model_path), model.digest, model.template or "")
        cached = self._templates.get(key)
        if not override and cached is not None:
            self._templates.move_to_end(key)
            return cached
        info = await self.info(model.model_path) if model.model_path is not None else None
        template = PromptTemplate(
            go_template=override or model.template,
            chat_template=facts.chat_template,
            bos_token=facts.bos_text,
            eos_token=facts.eos_text,
            architecture=info.architecture if info is not None else None,
        )
        if not override:
            self._templates[key] = template
            while len(self._templates) > self.TEMPLATE_CACHE:
                self._templates.popitem(last=False)
        return template

    def _kv_type(self, info: GGUFInfo) -> str:
        """The KV cache type for a model; a fallback to f16 is logged once per model file."""
        wanted = self.policy.kv_type()
        kind = _kv_type_for(info, wanted)
        if kind != wanted and info.path not in self._kv_fallbacks:
            self._kv_fallbacks.add(info.path)
            log.warning(
                "%s: KV cache type %s needs a head size that is a multiple of %d; using f16",
                info.path.name,
                wanted,
                KV_BLOCK[wanted],
            )
        return kind

    async def plan(self, model: LocalModel, options: Options) -> LoadSpec:
        """The load spec a request for `model` with `options` needs (reference §4.6, §4.7).

        Every load-time option that sizes an allocation is bounded here, before anything is
        allocated:
        - `num_ctx`: at least 4 and at most the model's train context (Ollama's llm/server.go),
          and all slots together inside llama.cpp's uint32 context size;
        - `num_batch`: at most `num_ctx` (Ollama's rule), 512 when not positive;
        - `num_thread`: the CPUs there are, else automatic; `num_gpu`: at most every layer;
        - the memory estimate counts the batch as well as the KV cache, and a load whose
          request or Modelfile chose `num_ctx`/`num_batch` and that cannot fit the budget (or,
          with no budget, the machine) is a 400 before any allocation. Ollama has no such
          rule (it starts the runner and answers 500 when it dies); here one request must
          not be able to take the server down.
        """
        if model.model_path is None:
            raise ApplianceError(f"{model.name.full()} has no model weights", status=400)
        info = await self.info(model.model_path)
        embedding_only = "completion" not in info.capabilities()
        n_seq = 1 if embedding_only else self.policy.num_parallel
        num_ctx = options.num_ctx or self.policy.default_num_ctx
        if info.context_length:
            num_ctx = min(num_ctx, info.context_length)
        num_ctx = max(4, min(num_ctx, MAX_TOTAL_CTX // n_seq))
        num_batch = options.num_batch if options.num_batch > 0 else 512
        num_batch = min(num_batch, num_ctx)
        cores = os.cpu_count() or 1
        num_thread = options.num_thread if 0 < options.num_thread <= cores else 0
        kv_type = self._kv_type(info)
        num_gpu = options.num_gpu
        if info.block_count and num_gpu > info.block_count + 1:
            num_gpu = info.block_count + 1  # more layers than the model has means all of them
        memory = info.estimate_memory(num_ctx, n_seq, num_batch, kv_type=kv_type)
        if not embedding_only:
            memory += self.policy.prompt_states_bytes
        self._check_fits(memory, options)
        return LoadSpec(
            key=str(model.model_path),
            model_path=model.model_path,
            num_ctx=num_ctx,
            n_seq=n_seq,
            num_batch=num_batch,
            num_thread=num_thread,
            use_mmap=options.use_mmap,
            num_gpu=num_gpu,
            adapters=tuple(str(a) for a in model.adapters),
            embedding_only=embedding_only,
            memory_bytes=memory,
            flash_attn=self.policy.flash_attention,
            kv_type=kv_type,
            options_key=options.load_key(info.context_length),
        )

    def _check_fits(self, memory: int, options: Options) -> None:
        """400 when options the client (or Modelfile) chose make the load larger than memory."""
        if not {"num_ctx", "num_batch"} & options.explicit:
            return  # the defaults: the scheduler decides, and answers as Ollama does
        ceiling = self.policy.memory_budget or physical_memory()
        if ceiling and memory > ceiling:
            raise BadRequest(
                f"model requires more system memory ({memory / 2**30:.1f} GiB) than is "
                f"available ({ceiling / 2**30:.1f} GiB) with num_ctx {options.num_ctx} and "
                f"num_batch {options.num_batch}; lower num_ctx or num_batch"
            )
