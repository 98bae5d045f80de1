"""The `LLM` facade: load a checkpoint, generate from prompts (strings or token ids)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch
from tqdm import tqdm

from ssd.config import SamplingParams
from ssd.engine.ar import ARRunner, make_step
from ssd.engine.requests import Request, RequestOutput, make_request
from ssd.kv import alloc_kv_cache
from ssd.models.config import CheckpointError
from ssd.models.loading import load_model, load_tokenizer

Prompt = str | Sequence[int]


class LLM:
    """Exact generation from a Hugging Face checkpoint directory.

    `mode="ar"` (the default when no draft is given) decodes autoregressively. `jit` is "eager",
    "compile" (torch.compile per shape bucket) or "cudagraph" (CUDA only); the default is
    "cudagraph" on CUDA and "eager" on CPU, where compilation costs more than it saves on short
    runs. All modes give the same tokens. The KV cache holds `num_pages` pages of `page_size`
    slots, enough by default for `max_batch` sequences of `max_model_len` tokens.
    """

    def __init__(
        self,
        target: str | Path,
        *,
        draft: str | Path | None = None,
        mode: str | None = None,
        dtype: torch.dtype | str | None = None,
        device: str | torch.device | None = None,
        jit: str | None = None,
        max_batch: int = 8,
        max_model_len: int | None = None,
        page_size: int = 16,
        num_pages: int | None = None,
    ):
        mode = mode or ("ar" if draft is None else "ssd")
        if mode != "ar" or draft is not None:
            raise NotImplementedError("only mode='ar' without a draft is available so far")
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if dtype is None:
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        elif isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        assert isinstance(dtype, torch.dtype)
        self.model = load_model(target, dtype=dtype, device=device)
        cfg = self.model.cfg
        try:
            self.tokenizer: Any = load_tokenizer(target, cfg.vocab_size)
        except CheckpointError:
            if any(
                (Path(target) / f).exists() for f in ("tokenizer.json", "tokenizer_config.json")
            ):
                raise
            self.tokenizer = None  # token-id prompts only
        self.max_len = min(
            max_model_len or cfg.max_position_embeddings, cfg.max_position_embeddings
        )
        pages = num_pages or max_batch * -(-self.max_len // page_size)
        kv = alloc_kv_cache(cfg, pages, page_size, dtype=dtype, device=device)
        step = make_step(jit or ("cudagraph" if device.type == "cuda" else "eager"))
        self.runner = ARRunner(self.model, kv, step, max_batch, self.max_len)
        eos = set(cfg.eos_token_ids)
        if self.tokenizer is not None and self.tokenizer.eos_token_id is not None:
            eos.add(self.tokenizer.eos_token_id)
        self.eos_ids = sorted(eos)

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
        prompts = _prompt_list(prompts)
        params = sampling_params or SamplingParams()
        plist = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
        if len(plist) != len(prompts):
            raise ValueError(f"{len(plist)} sampling params for {len(prompts)} prompts")
        outputs, requests = [], []
        for i, (prompt, sp) in enumerate(zip(prompts, plist, strict=True)):
            ids = self._encode(prompt) if isinstance(prompt, str) else list(prompt)
            outputs.append(RequestOutput(request_id=i, prompt_token_ids=ids))
            try:
                requests.append(
                    make_request(i, ids, sp, self.model.cfg.vocab_size, self.max_len, self.eos_ids)
                )
            except ValueError as e:
                outputs[i].finish_reason, outputs[i].error = "error", str(e)
        bar = tqdm(total=len(requests), desc="generate", unit="req", disable=not use_tqdm)

        def finish(req: Request) -> None:
            out = outputs[req.id]
            out.token_ids, out.finish_reason = req.out, req.finish_reason
            if self.tokenizer is not None:
                out.text = self.tokenizer.decode(req.out, skip_special_tokens=True)
            bar.update()

        self.runner.run(requests, finish)
        bar.close()
        return outputs

    def _encode(self, prompt: str) -> list[int]:
        if self.tokenizer is None:
            raise ValueError("this checkpoint has no tokenizer: pass prompts as token ids")
        return list(self.tokenizer.encode(prompt))


def _prompt_list(prompts: Prompt | Sequence[Prompt]) -> list[Prompt]:
    """One prompt (a string or a list of ids) or a list of prompts -> a list of prompts."""
    if isinstance(prompts, str) or (len(prompts) > 0 and isinstance(prompts[0], int)):
        return [cast(Prompt, prompts)]
    return list(cast(Sequence[Prompt], prompts))
