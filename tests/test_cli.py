from ssd.cli import main


def test_demo_runs_every_proposal_kind(capsys):
    assert main(["demo", "--rows", "5000", "--k", "2"]) == 0
    out = capsys.readouterr().out
    for name in ("draft q", "Saguaro q'", "point mass"):
        line = next(row for row in out.splitlines() if row.startswith(name))
        rate, tau, p_value = (float(x) for x in line[22:].split()[:3])
        assert 0 <= rate <= 1 and 1 <= tau <= 3 and 0 <= p_value <= 1
