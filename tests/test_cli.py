from ssd.cli import default_setup, main


def test_demo_runs_every_proposal_kind(capsys):
    assert main(["demo", "--rows", "5000", "--k", "2"]) == 0
    out = capsys.readouterr().out
    for name in ("draft q", "Saguaro q'", "point mass"):
        line = next(row for row in out.splitlines() if row.startswith(name))
        rate, tau, p_value = (float(x) for x in line[22:].split()[:3])
        assert 0 <= rate <= 1 and 1 <= tau <= 3 and 0 <= p_value <= 1


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


def test_draft_dtype_reaches_the_engine(checkpoints, capsys):
    path = str(checkpoints["llama"])
    args = ["generate", "--target", path, "--draft", path, "--mode", "sd"]
    assert main([*args, "--draft-dtype", "int64", "hi"]) == 1
    assert "floating-point" in capsys.readouterr().err
    # int8 is a draft precision: the engine takes it and gets as far as the (missing) tokenizer
    assert main([*args, "--draft-dtype", "int8", "hi"]) == 1
    assert "no tokenizer" in capsys.readouterr().err


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
    assert (cuda["mode"], cuda["dtype"], cuda["draft_dtype"]) == ("sd", "bfloat16", "bfloat16")
    assert "measured fastest" in cpu["reason"] and "own device" in cuda["reason"]
    assert default_setup("cuda:1") == cuda
