import json
import math
import shutil
import subprocess
import sys

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from ssd.cli import default_setup, main
from ssd.demo import tables

# `ssd demo` as a user without the `test` extra runs it: hypothesis and pytest unimportable.
_DEMO_WITHOUT_TEST_EXTRA = (
    "import sys\n"
    "sys.modules.update(hypothesis=None, pytest=None, _pytest=None)\n"
    "from ssd.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def _accepted_moments(step: torch.Tensor, k: int) -> tuple[float, float]:
    """Mean and variance of the number N of drafted tokens accepted of K from context 0, where
    step[a, b] = P(the draft proposes b after a and the target accepts it): P(N >= i) = e_0 M^i 1,
    E[N] = sum_i P(N >= i) and E[N^2] = sum_i (2i - 1) P(N >= i)."""
    row, mean, square = torch.zeros(step.shape[0], dtype=step.dtype), 0.0, 0.0
    row[0] = 1.0
    for i in range(1, k + 1):
        row = row @ step
        mean += float(row.sum())
        square += (2 * i - 1) * float(row.sum())
    return mean, square - mean**2


def test_demo_acceptance_matches_the_closed_form_without_the_test_extra():
    rows, k = 20_000, 2
    cmd = [sys.executable, "-c", _DEMO_WITHOUT_TEST_EXTRA, "demo", "--rows", str(rows)]
    res = subprocess.run([*cmd, "--k", str(k)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    target, draft = tables()
    vocab = target.shape[0]
    # Saguaro's q' computed here from its definition: top-2 of q scaled by C = 0.5, renormalized.
    top2 = torch.zeros_like(draft, dtype=torch.bool).scatter(-1, draft.topk(2, -1).indices, True)
    saguaro = torch.where(top2, 0.5 * draft, draft)
    saguaro = saguaro / saguaro.sum(-1, keepdim=True)
    successor = torch.arange(vocab).roll(-1)  # the n-gram proposal: token a + 1 after a
    point = torch.zeros_like(target).scatter(-1, successor[:, None], 1.0)
    steps = {  # a token drawn from q is accepted with min(1, p/q): P(propose b, accept) = min(p, q)
        "draft q": torch.minimum(target, draft),
        "Saguaro q'": torch.minimum(target, saguaro),
        "point mass": torch.minimum(target, point),
    }
    for name, step in steps.items():
        line = next(row for row in res.stdout.splitlines() if row.startswith(name))
        rate, _, p_value = (float(x) for x in line[22:].split()[:3])
        mean, var = _accepted_moments(step, k)
        tolerance = 5 * math.sqrt(var / rows) / k + 5e-4  # 5 sd of the mean, and the rounding
        assert abs(rate - mean / k) < tolerance, (name, rate, mean / k, tolerance)
        # the first emitted token follows the target: fails w.p. 1e-4 per proposal if exact
        assert p_value > 1e-4, (name, p_value)


def test_distill_commands_have_their_own_parsers(capsys):
    for command, usage in [
        ("distill", "usage: ssd distill"),
        ("eval-pair", "usage: ssd eval-pair"),
        ("prepare-draft", "usage: ssd prepare-draft"),
    ]:
        try:
            main([command, "--help"])
        except SystemExit as e:
            assert e.code == 0
        else:
            raise AssertionError(f"ssd {command} --help did not exit")
        assert capsys.readouterr().out.startswith(usage)


def test_mode_sd_with_a_target_but_no_draft_is_refused(capsys):
    assert main(["generate", "--target", "x", "--mode", "sd", "hi"]) == 1
    assert "needs --draft" in capsys.readouterr().err


def _tokenizer(vocab: int) -> PreTrainedTokenizerFast:
    words = [f"w{i}" for i in range(vocab)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[0]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=words[0], eos_token=words[-1])


def _generated(capsys, argv: list[str]) -> tuple[list[str], str]:
    """(the streamed text lines, the summary line) of one `ssd generate` run."""
    assert main(argv) == 0, capsys.readouterr().err
    *text, summary = capsys.readouterr().out.splitlines()
    return text, summary


def test_draft_dtype_reaches_the_engine(checkpoints, tmp_path, capsys):
    path = str(checkpoints["llama"])
    args = ["generate", "--target", path, "--draft", path, "--mode", "sd"]
    assert main([*args, "--draft-dtype", "int64", "hi"]) == 1
    assert "floating-point" in capsys.readouterr().err
    # An accepted draft dtype runs end to end, and greedy SD emits AR's tokens whatever the
    # draft's precision (a lower one may accept fewer drafted tokens, never change the output).
    # The draft is the target's checkpoint, so in fp32 it must accept every drafted token.
    model = tmp_path / "llama"
    shutil.copytree(checkpoints["llama"], model)
    _tokenizer(256).save_pretrained(model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "eos_token_id": 255}))
    # 11 tokens: the prefill's, then two whole rounds of K + 1 with nothing cut off
    common = ["generate", "--target", str(model), "--max-tokens", "11", "w5 w17 w33 w4"]
    ar_text, _ = _generated(capsys, [*common, "--mode", "ar"])
    for dtype in ("int8", "float32"):
        argv = [*common, "--draft", str(model), "--mode", "sd", "--draft-dtype", dtype]
        text, summary = _generated(capsys, argv)
        assert text == ar_text and text[0].strip(), dtype
        assert summary.startswith(f"[sd] K=4, draft {dtype}, acceptance "), summary
        assert dtype != "float32" or "acceptance 1.00" in summary, summary


def _refused_before_loading(monkeypatch, argv: list[str]) -> str:
    def fail(*args, **kwargs):
        raise AssertionError("loaded or prepared a model")

    monkeypatch.setattr("ssd.prepare.prepare_pair", fail)
    monkeypatch.setattr("ssd.prepare.prepare_model", fail)
    monkeypatch.setattr("ssd.LLM", fail)
    return argv


def test_generate_without_a_prompt_is_an_error(monkeypatch, capsys):
    for argv in (["generate"], ["generate", "--mode", "sd", "--max-tokens", "8"]):
        assert main(_refused_before_loading(monkeypatch, argv)) == 1
        err = capsys.readouterr().err
        assert "a prompt is needed" in err and err.count("\n") == 1


def test_generate_rejects_bad_k_and_max_tokens(monkeypatch, capsys):
    for flag, value, says in [
        ("--k", "0", "--k"),
        ("--k", "33", "--k"),
        ("--k", "-2", "--k"),
        ("--max-tokens", "0", "max_tokens"),
        ("--draft-stop", "1.5", "--draft-stop"),
    ]:
        assert main(_refused_before_loading(monkeypatch, ["generate", flag, value, "hi"])) == 1
        assert says in capsys.readouterr().err


def test_default_setup_is_sd_with_a_reason():
    cpu, cuda = default_setup("cpu"), default_setup("cuda")
    assert (cpu["mode"], cpu["k"], cpu["dtype"], cpu["draft_dtype"]) == (
        "sd",
        4,
        "bfloat16",
        "int8",
    )
    assert 0 < cpu["draft_stop"] < 1 and "draft_stop" not in default_setup("cuda")
    assert (cuda["mode"], cuda["dtype"], cuda["draft_dtype"]) == ("sd", "bfloat16", "bfloat16")
    assert "measured fastest" in cpu["reason"] and "own device" in cuda["reason"]
    assert default_setup("cuda:1") == cuda


def test_the_default_early_stop_goes_to_sd_and_ssd_not_ar(monkeypatch):
    import torch

    seen: list[dict] = []
    monkeypatch.setattr("ssd.prepare.prepare_pair", lambda *a, **k: ("target", "draft"))
    monkeypatch.setattr("ssd.cli._generate", lambda args, opts: seen.append(opts) or 0)
    for argv in (["--mode", "sd"], ["--mode", "ssd"], ["--mode", "ar"], ["--draft-stop", "0"]):
        assert main(["generate", *argv, "hi"]) == 0
    stop = default_setup("cuda" if torch.cuda.is_available() else "cpu").get("draft_stop")
    assert [opts.get("draft_stop") for opts in seen] == [stop, stop, None, 0.0]
