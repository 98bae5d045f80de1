"""The `LLM` facade: load a checkpoint, generate from prompts (strings or token ids)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from tqdm import tqdm

from ssd import saguaro
from ssd.config import MAX_K, SamplingParams, draft_stop_problem, is_int
from ssd.engine.ar import ARRunner
from ssd.engine.drafters import DraftConfig, draft_kv_pages, make_drafter
from ssd.engine.remote import RemoteDrafter
from ssd.engine.requests import Request, RequestOutput, make_request
from ssd.engine.spec import SpecRunner
from ssd.engine.target import TargetModel, target_steps
from ssd.engine.tensor_parallel import ShardSpec, TensorParallelModel, under_torchrun
from ssd.kv import alloc_kv_cache, kv_cache_bytes
from ssd.models.config import ModelConfig
from ssd.models.loading import load_model, load_tokenizer
from ssd.models.quantize import activation_dtype
from ssd.models.sharding import check_tensor_parallel

Prompt = str | Sequence[int]


class LLM:
    """Exact generation from a Hugging Face checkpoint directory.

    `mode="ar"` (the default when no draft is given) decodes autoregressively; "sd" is ordinary
    speculative decoding with `k` draft tokens per round, or fewer with `draft_stop`: a round's
    drafting ends once the draft gave its last token a probability below `draft_stop` (every
    sequence of the batch), which saves the draft passes and verification rows a doubtful token
    would likely waste; exact at any value, as the stop reads the draft's probabilities only;
    "ssd" (the default with a draft) is Saguaro: a speculation cache over `budget` branches
    (default 4(K+1); K for a draft on CPU, whose tree steps are compute-bound), spread each
    round over the outcomes the draft itself finds likeliest (`fanout="ranked"`, the default),
    or by Saguaro's geometric allocation (`fanout="geometric"`) for acceptance
    `accept_estimate` and power-law exponent `power`, each estimated online when not given, or
    as a fixed `fanout` of K+1 counts;
    Saguaro sampling with constant `saguaro_c` (1 disables it) and a `backup` on cache misses
    ("neural", "fast" n-gram, or "auto"), whose neural drafting stops early with `draft_stop` as
    SD's does. `dtype` defaults to bf16 on CUDA, fp32 on CPU; `draft_dtype` to `dtype`; any
    draft precision is exact (the draft only proposes): a bf16 draft next to an fp32 target, or
    `draft_dtype="int8"` (int8 weights, bf16 activations: half the bytes of a bf16 draft). With
    `draft_process` the draft runs in its own process (on `draft_device`, or its own CPU core),
    answering each round and then building the next cache while the target verifies; otherwise
    the same steps run in this process, one after the other; a draft process that dies or does
    not answer a round within `draft_timeout_s` is stopped, and its requests finish in SD with
    the draft in this process (`metrics["draft_failures"]` counts it). Call `close()` (or use
    `with LLM(...)`) to stop the draft process. `jit` is "eager", "compile" (torch.compile per
    shape bucket) or "cudagraph" (CUDA only); the default is "cudagraph" on CUDA and "eager" on
    CPU, where compilation costs more than it saves on short runs. All modes give the same
    tokens. The KV cache holds `num_pages` pages of `page_size` slots, enough by default for
    `max_batch` sequences of `max_model_len` tokens; requests take pages as they grow, and when
    they run out the last admitted are preempted and recomputed later. `max_num_batched_tokens`
    caps the prompt tokens one prefill step admits; with `prefix_caching` full prompt pages are
    shared by content between requests (target and draft) (`ssd.engine.prefix_cache`).
    `tensor_parallel=N` splits the target over N processes (`ssd.engine.tensor_parallel`:
    spawned here on CPU, or the ranks of a `torchrun` launch); `draft_tensor_parallel=M` splits
    the draft over M processes of its own (spawned by the process that runs the draft: this one,
    or the draft process), on CPU.
    """

    def __init__(
        self,
        target: str | Path,
        *,
        draft: str | Path | None = None,
        mode: str | None = None,
        k: int = 4,
        draft_stop: float | None = None,
        fanout: Sequence[int] | str | None = None,
        budget: int | None = None,
        saguaro_c: float = 1.0,
        backup: str = "neural",
        accept_estimate: float | None = None,
        power: float | None = None,
        dtype: torch.dtype | str | None = None,
        draft_dtype: torch.dtype | str | None = None,
        device: str | torch.device | None = None,
        jit: str | None = None,
        max_batch: int = 8,
        max_model_len: int | None = None,
        page_size: int = 16,
        num_pages: int | None = None,
        draft_process: bool = False,
        draft_device: str | None = None,
        draft_timeout_s: float = 120.0,
        prefix_caching: bool = False,
        tensor_parallel: int = 1,
        draft_tensor_parallel: int = 1,
        max_num_batched_tokens: int | None = None,
    ):
        mode = mode or ("ar" if draft is None else "ssd")
        if mode not in ("ar", "sd", "ssd"):
            raise ValueError(f"mode must be 'ar', 'sd' or 'ssd', got {mode!r}")
        if mode != "ar" and draft is None:
            raise ValueError(f"mode {mode!r} needs a draft checkpoint")
        if problem := draft_stop_problem(draft_stop):
            raise ValueError(f"draft_stop: {problem}")
        if draft_stop is not None and (mode == "ar" or (mode == "ssd" and backup == "fast")):
            what = "mode 'ar'" if mode == "ar" else "SSD's fast (n-gram) backup"
            raise ValueError(f"draft_stop stops a draft's passes early: {what} has none")
        if not 0 < saguaro_c <= 1:
            raise ValueError(f"saguaro_c must be in (0, 1], got {saguaro_c}")
        if backup not in saguaro.BACKUPS:  # here, not first in a draft process
            raise ValueError(f"backup must be one of {saguaro.BACKUPS}, got {backup!r}")
        self.mode = mode
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = _dtype(dtype, torch.bfloat16 if device.type == "cuda" else torch.float32)
        # The draft only proposes (verification is exact for any proposal), so its precision
        # is a speed choice: a bf16 draft next to an fp32 target is fine.
        draft_dtype = "int8" if draft_dtype == "int8" else _dtype(draft_dtype, dtype)
        # Every option is checked against the configs before any weight or page is allocated.
        cfg = ModelConfig.from_pretrained(target)
        self.max_len = min(
            max_model_len or cfg.max_position_embeddings, cfg.max_position_embeddings
        )
        _check_sizes(k, max_batch, self.max_len, page_size, num_pages, draft_timeout_s)
        if max_num_batched_tokens is not None and (
            not is_int(max_num_batched_tokens) or max_num_batched_tokens < 1
        ):
            raise ValueError(
                f"max_num_batched_tokens must be an integer >= 1, got {max_num_batched_tokens!r}"
            )
        for name, size in (("", tensor_parallel), ("draft_", draft_tensor_parallel)):
            if not is_int(size) or size < 1:
                raise ValueError(f"{name}tensor_parallel must be an integer >= 1, got {size!r}")
        check_tensor_parallel(cfg, tensor_parallel)
        if tensor_parallel > 1 and device.type != "cpu" and not under_torchrun():
            raise ValueError("a tensor-parallel target on GPUs is launched with torchrun")
        if draft_tensor_parallel > 1 and (
            draft is None or torch.device(draft_device or device).type != "cpu"
        ):
            raise ValueError("draft_tensor_parallel needs a draft, on CPU")
        jit_name = jit or ("cudagraph" if device.type == "cuda" else "eager")
        lookahead = 0 if mode == "ar" else k + 1
        pages = num_pages or max_batch * -(-(self.max_len + lookahead) // page_size)
        kv_bytes = [(device, kv_cache_bytes(cfg, pages, page_size, dtype))]
        dcfg = None
        if mode != "ar":
            assert draft is not None
            draft_cfg = ModelConfig.from_pretrained(draft)
            check_pair(cfg, None, draft_cfg, None)  # the vocabularies; tokenizers once loaded
            check_tensor_parallel(draft_cfg, draft_tensor_parallel)
            _check_fanout(mode, k, fanout, budget, cfg.vocab_size)
            dcfg = DraftConfig(
                path=str(draft),
                mode=mode,
                k=k,
                fanout=() if fanout is None or isinstance(fanout, str) else tuple(fanout),
                allocation=fanout if isinstance(fanout, str) else "ranked",
                budget=budget or _default_budget(k, torch.device(draft_device or device)),
                accept=accept_estimate,
                power=power,
                saguaro_c=saguaro_c,
                backup=backup,
                dtype=str(draft_dtype).removeprefix("torch."),
                device=str(draft_device or device),
                jit=jit_name,
                max_len=self.max_len,
                max_batch=max_batch,
                page_size=page_size,
                tensor_parallel=draft_tensor_parallel,
                prefix_caching=prefix_caching,
                stop_below=draft_stop,
            )
            kv_dtype = activation_dtype(draft_dtype)
            draft_bytes = kv_cache_bytes(draft_cfg, draft_kv_pages(dcfg)[0], page_size, kv_dtype)
            kv_bytes.append((torch.device(dcfg.device), draft_bytes))
        _check_memory(kv_bytes)

        self._mesh: TensorParallelModel | None = None
        steps: list[Any] = list(target_steps(jit_name))
        if tensor_parallel > 1:  # this process is rank 0 of the target's mesh
            spec = ShardSpec(
                str(target),
                str(dtype).removeprefix("torch."),
                str(device),
                pages,
                page_size,
                jit_name,
            )
            self._mesh = TensorParallelModel(spec, tensor_parallel, target_steps)
            self.model, steps = self._mesh.model, self._mesh.steps
        else:
            self.model = load_model(target, dtype=dtype, device=device)
        self.tokenizer: Any = _tokenizer(target, cfg.vocab_size)
        kv = alloc_kv_cache(self.model.cfg, pages, page_size, dtype=dtype, device=device)
        eos = set(cfg.eos_token_ids)
        if self.tokenizer is not None and self.tokenizer.eos_token_id is not None:
            eos.add(self.tokenizer.eos_token_id)
        self.eos_ids = sorted(eos)
        target_model = TargetModel(
            self.model,
            kv,
            steps[0],
            max_batch,
            self.max_len,
            lookahead,
            prefix_caching,
            max_num_batched_tokens,
        )
        self._next_id = 0  # request ids, unique for the engine's life
        self._outputs: dict[int, RequestOutput] = {}  # by request id, until finished
        self._held: list[RequestOutput] = []  # outputs made during `generate`, for `step`
        if dcfg is None:
            self.runner: ARRunner | SpecRunner = ARRunner(target_model)
            return
        check_pair(cfg, self.tokenizer, draft_cfg, _tokenizer(dcfg.path, draft_cfg.vocab_size))
        # A failed draft process hands its requests to SD with the draft in this process.
        local = dataclasses.replace(dcfg, mode="sd", device=str(device), tensor_parallel=1)
        drafter = (
            RemoteDrafter(dcfg, timeout_s=draft_timeout_s) if draft_process else make_drafter(dcfg)
        )
        fallback = (lambda: make_drafter(local)) if draft_process else None
        self.runner = SpecRunner(target_model, steps[1], drafter, fallback)

    def close(self) -> None:
        """Stop the draft process and the target's other ranks, if any."""
        self.runner.close()
        if self._mesh is not None:
            self._mesh.close()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def metrics(self) -> dict[str, float | list[float] | None]:
        """Speculation metrics of the last busy period, a `generate` call say (docs/design.md
        §5; none in AR), and since the engine started: the prefix cache's prompt tokens
        admitted, those whose KV pages were shared, and their ratio; and how many times a
        request was preempted for lack of pages."""
        out = self.runner.metrics.summary() if isinstance(self.runner, SpecRunner) else {}
        pages = self.runner.target.pages
        out["prefix_cache_prompt_tokens"] = pages.prompt_tokens
        out["prefix_cache_hit_tokens"] = pages.hit_tokens
        out["prefix_cache_hit_rate"] = pages.hit_tokens / max(pages.prompt_tokens, 1)
        out["preemptions"] = self.runner.sched.preemptions
        return out

    def add_request(self, prompt: Prompt, sampling_params: SamplingParams | None = None) -> int:
        """Queue one request and return its id; it joins the running batch at a later `step`,
        while others run (continuous batching). A request that cannot run (empty, too long,
        ids outside the vocabulary, larger than the cache) raises ValueError here."""
        ids = self._encode(prompt) if isinstance(prompt, str) else list(prompt)
        req = self._request(ids, sampling_params or SamplingParams())
        self._outputs[req.id] = RequestOutput(request_id=req.id, prompt_token_ids=ids)
        return req.id

    def step(self) -> list[RequestOutput]:
        """One engine step (a prefill, a decode step in AR, a verification round in SD/SSD):
        the output of each request that gained tokens, with those in `new_token_ids`; a
        finished one has its `finish_reason` and is forgotten after this."""
        outputs, self._held = self._held, []
        for req, n in self.runner.step():
            outputs.append(self._advance(req, n))
        return outputs

    def has_unfinished(self) -> bool:
        """Whether requests added with `add_request` are waiting or running."""
        return self.runner.sched.busy

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Generate for each prompt (a string, or a list of token ids); outputs in prompt order.

        A prompt that cannot run (empty, too long, ids outside the vocabulary) gets an output
        with `finish_reason="error"` and the reason in `error`; the others run normally.
        """
        outputs, ids = self._submit(prompts, sampling_params)
        bar = tqdm(total=len(ids), desc="generate", unit="req", disable=not use_tqdm)
        for out in self._run(ids, stream=False):
            if out.finish_reason is not None:
                outputs[ids[out.request_id]] = out
                bar.update()
        bar.close()
        return [self._renumber(out, i) for i, out in enumerate(outputs)]

    def generate_stream(
        self,
        prompts: Prompt | Sequence[Prompt],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
    ) -> Iterator[RequestOutput]:
        """Like `generate`, but yields a request's output each time it gains tokens (after every
        step in AR, every verification round in SD/SSD), with those tokens in `new_token_ids`.
        Refused prompts are yielded first, once, with `finish_reason="error"`."""
        outputs, ids = self._submit(prompts, sampling_params)
        yield from (o for o in outputs if o.finish_reason == "error")
        for out in self._run(ids, stream=True):
            yield self._renumber(out, ids[out.request_id])

    def _submit(
        self,
        prompts: Prompt | Sequence[Prompt],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None,
    ) -> tuple[list[RequestOutput], dict[int, int]]:
        """Queue a call's prompts: every prompt's output (numbered by its place in the call; a
        refused one already final), and each queued request's place by its id."""
        prompts = _prompt_list(prompts)
        params = sampling_params or SamplingParams()
        plist = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
        if len(plist) != len(prompts):
            raise ValueError(f"{len(plist)} sampling params for {len(prompts)} prompts")
        outputs, ids = [], {}
        for i, (prompt, sp) in enumerate(zip(prompts, plist, strict=True)):
            tokens = self._encode(prompt) if isinstance(prompt, str) else list(prompt)
            outputs.append(RequestOutput(request_id=i, prompt_token_ids=tokens))
            try:
                ids[self.add_request(tokens, sp)] = i
            except ValueError as e:
                outputs[i].finish_reason, outputs[i].error = "error", str(e)
        return outputs, ids

    def _run(self, ids: dict[int, int], stream: bool) -> Iterator[RequestOutput]:
        """Step until the requests `ids` finish, yielding their outputs; other requests'
        outputs (from `add_request`) are held for the next `step`."""
        left = set(ids)
        while left:
            for req, n in self.runner.step():
                if req.id not in ids:
                    self._held.append(self._advance(req, n))
                    continue
                out = self._advance(req, n, stream)
                if out.finish_reason is not None:
                    left.discard(req.id)
                yield out

    def _request(self, ids: list[int], params: SamplingParams) -> Request:
        req = make_request(
            self._next_id, ids, params, self.model.cfg.vocab_size, self.max_len, self.eos_ids
        )
        self.runner.sched.add(req)
        self._next_id += 1
        return req

    def _advance(self, req: Request, n: int, stream: bool = True) -> RequestOutput:
        """A snapshot of the request's output after it gained `n` tokens; its text is decoded
        when streamed and once finished (not at every step of a `generate` call)."""
        out = self._outputs[req.id]
        self._fill(out, req, text=stream or req.finish_reason is not None)
        out.new_token_ids = req.out[len(req.out) - n :]
        if req.finish_reason is not None:
            del self._outputs[req.id]
        return dataclasses.replace(out, token_ids=list(out.token_ids))

    @staticmethod
    def _renumber(out: RequestOutput, place: int) -> RequestOutput:
        return dataclasses.replace(out, request_id=place)

    def _fill(self, out: RequestOutput, req: Request, text: bool) -> None:
        out.token_ids, out.finish_reason = req.out, req.finish_reason
        out.acceptance = req.acceptance
        if text and self.tokenizer is not None:
            out.text = self.tokenizer.decode(req.out, skip_special_tokens=True)

    def _encode(self, prompt: str) -> list[int]:
        if self.tokenizer is None:
            raise ValueError("this checkpoint has no tokenizer: pass prompts as token ids")
        return list(self.tokenizer.encode(prompt))


def _default_budget(k: int, draft_device: torch.device) -> int:
    """SSD's branches: 4(K+1) where a tree step's rows are nearly free (a GPU), K on a CPU core,
    where each row of a tree step costs arithmetic and the tree must fit inside a verification
    (docs/performance.md, findings 5, 28 and 43)."""
    return k if draft_device.type == "cpu" else 4 * (k + 1)


def _dtype(value: torch.dtype | str | None, default: torch.dtype) -> torch.dtype:
    if value is None:
        return default
    out = getattr(torch, value, None) if isinstance(value, str) else value
    if not isinstance(out, torch.dtype) or not out.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch dtype, got {value!r}")
    return out


def _tokenizer(path: str | Path, vocab_size: int) -> Any:
    """The checkpoint's tokenizer, or None when it ships none (token-id prompts only).

    Checked by file, because `AutoTokenizer` may build an empty default tokenizer instead.
    """
    files = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
    if not any((Path(path) / f).exists() for f in files):
        return None
    return load_tokenizer(path, vocab_size)


def _check_sizes(
    k: int,
    max_batch: int,
    max_len: int,
    page_size: int,
    num_pages: int | None,
    draft_timeout_s: float,
) -> None:
    for name, value in (("max_batch", max_batch), ("page_size", page_size)):
        if not is_int(value) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if num_pages is not None and (not is_int(num_pages) or num_pages < 1):
        raise ValueError(f"num_pages must be an integer >= 1, got {num_pages!r}")
    if max_len < 2:
        raise ValueError(f"max_model_len must be >= 2 (a prompt token and one more), got {max_len}")
    if not is_int(k) or not 1 <= k <= MAX_K:
        raise ValueError(
            f"k (draft tokens per round) must be an integer in [1, {MAX_K}], got {k!r}"
        )
    if k + 2 > max_len:
        raise ValueError(
            f"k={k}: a round of K+1 tokens after the prompt exceeds the context {max_len}"
        )
    if not draft_timeout_s > 0:
        raise ValueError(f"draft_timeout_s must be > 0, got {draft_timeout_s!r}")


def _check_fanout(
    mode: str, k: int, fanout: Sequence[int] | str | None, budget: int | None, vocab: int
) -> None:
    """SSD's speculation-cache shape: an allocation's name or K+1 counts, at most `vocab`
    branches per position (there are no more distinct outcomes), so at most (K+1) * vocab."""
    if mode != "ssd" and (fanout is not None or budget is not None):
        raise ValueError(f"fanout and budget shape SSD's speculation cache; mode is {mode!r}")
    if isinstance(fanout, str):
        if fanout not in saguaro.ALLOCATIONS:
            raise ValueError(
                f"fanout must be one of {saguaro.ALLOCATIONS} or K+1 counts, got {fanout!r}"
            )
    elif fanout is not None:
        saguaro.check_fanout(fanout, k, vocab)
    if budget is not None and (not is_int(budget) or not 1 <= budget <= (k + 1) * vocab):
        raise ValueError(
            f"budget must be an integer in [1, (K+1) * vocab_size = {(k + 1) * vocab}], "
            f"got {budget!r}"
        )


def _check_memory(needs: Sequence[tuple[torch.device, int]]) -> None:
    """Refuse KV caches larger than their device's memory (all of it on CPU, where pages are
    committed as they are written; what is free on a GPU)."""
    by_device: dict[torch.device, int] = {}
    for device, n in needs:
        by_device[device] = by_device.get(device, 0) + n
    for device, n in by_device.items():
        if device.type == "cuda":
            have, what = torch.cuda.mem_get_info(device)[0], "free on"
        elif device.type == "cpu":
            have, what = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "in"
        else:
            continue
        if n > have:
            raise ValueError(
                f"the KV caches need {n / 2**30:.1f} GiB, more than the {have / 2**30:.1f} GiB "
                f"{what} {device}: lower max_batch, max_model_len or num_pages (or k/budget)"
            )


def check_pair(target: ModelConfig, target_tok: Any, draft: ModelConfig, draft_tok: Any) -> None:
    """Refuse a draft whose vocabulary or tokenizer differs from the target's."""
    if draft.vocab_size != target.vocab_size:
        raise ValueError(
            f"the draft's vocab_size {draft.vocab_size} differs from the target's "
            f"{target.vocab_size}: speculative decoding needs one shared vocabulary"
        )
    if (target_tok is None) != (draft_tok is None) or (
        target_tok is not None and target_tok.get_vocab() != draft_tok.get_vocab()
    ):
        raise ValueError("the draft's tokenizer differs from the target's")


def _prompt_list(prompts: Prompt | Sequence[Prompt]) -> list[Prompt]:
    """One prompt (a string or a list of ids) or a list of prompts -> a list of prompts."""
    if isinstance(prompts, str) or (len(prompts) > 0 and isinstance(prompts[0], int)):
        return [cast(Prompt, prompts)]
    return list(cast(Sequence[Prompt], prompts))
