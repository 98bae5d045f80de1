from ssd.cli import main


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
    args = ["generate", "--target", path, "--draft", path, "--mode", "sd", "--draft-dtype", "int8"]
    assert main([*args, "hi"]) == 1
    assert "floating-point" in capsys.readouterr().err
