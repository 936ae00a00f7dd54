"""report.md, plots.png, personalization per client, and one ε everywhere (issue 14, parts 3-5)."""

import json
import re
import shutil

import numpy as np
import pytest

from fl_core.cli import main as cli_main
from fl_core.config import config_from_dict
from fl_core.learn.personalize import MIN_TEST_EXAMPLES, PersonalizationReport
from fl_core.run import rundir
from fl_core.run.loop import run
from fl_core.run.runreport import load_report

pytestmark = pytest.mark.plots  # this module's runs draw plots.png (tests/conftest.py)

BASE = {"rounds": 3, "clients_per_round": 5, "secure_randomness": False, "seed": 0,
        "data": {"num_clients": 10}, "model": {"hidden": 8},
        "local": {"epochs": 1, "lr": 0.1, "batch_size": 16, "momentum": 0.0}, "secagg": {"min_survivors": 0.6}}


def cfg_of(**over):
    d = json.loads(json.dumps(BASE))
    for k, v in over.items():
        d.setdefault(k, {}).update(v) if isinstance(v, dict) else d.__setitem__(k, v)
    return config_from_dict(d)


def _run(cfg, out):
    lines = []
    s = run(cfg, out, progress=False, log=lines.append)
    return s, lines


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    """DP-SGD where a client's budget lasts about one visit, so clients sit out over their budget."""
    out = tmp_path_factory.mktemp("dpsgd") / "dpsgd_small"
    cfg = cfg_of(rounds=4, dp={"mode": "sample", "noise_multiplier": 1.0, "epsilon_budget": 4.0, "l2_clip": 1.0})
    return out, *_run(cfg, out)


@pytest.fixture(scope="module")
def client_prv_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "ddp_prv"
    cfg = cfg_of(dp={"mode": "client", "target_epsilon": 8.0, "accountant": "prv"})
    return out, *_run(cfg, out)


@pytest.fixture(scope="module")
def personal_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pers") / "pers"
    cfg = cfg_of(dp={"mode": "none"}, data={"num_clients": 20, "partition": "dirichlet", "alpha": 0.1},
                 personalize={"steps": 5})
    return out, *_run(cfg, out)


def _final_eps(lines):
    (line,) = [x for x in lines if x.startswith("final test accuracy")]
    return line, float(re.search(r"ε = ([0-9.]+)", line).group(1))


@pytest.mark.parametrize("which", ["sample_run", "client_prv_run"])
def test_one_epsilon_everywhere(which, request):
    out, summary, lines = request.getfixturevalue(which)
    privacy = json.loads((out / rundir.PRIVACY).read_text())
    summ = json.loads((out / rundir.SUMMARY).read_text())
    metrics = rundir.read_jsonl(out / rundir.METRICS)
    line, console = _final_eps(lines)
    eps = privacy["epsilon"]
    assert console == pytest.approx(eps, abs=5e-4)
    assert summ["epsilon"] == eps == summary.epsilon == metrics[-1]["epsilon"]
    acc = privacy["epsilon_accountant"]
    assert summ["epsilon_accountant"] == acc and f"accountant: {acc.upper()}" in line
    report = (out / rundir.REPORT).read_text()
    assert f"ε = {eps:.3f}" in report and f"accountant: {acc.upper()}" in report
    # the neighbouring relation the number is proved for, as the accountant states it
    assert privacy["adjacency"] in ("zero-out", "replace-one", "add-remove")
    assert f"| neighbouring datasets | {privacy['adjacency']}: {privacy['adjacency_means']} |" in report


def test_dp_sgd_says_the_number_is_the_worst_clients(sample_run):
    out, _, lines = sample_run
    assert "the worst client's" in _final_eps(lines)[0]
    privacy = json.loads((out / rundir.PRIVACY).read_text())
    mech = privacy["mechanisms"][0]
    assert privacy["epsilon"] == pytest.approx(mech["epsilon_worst_client"])
    assert "worst client's" in privacy["epsilon_is"]


def test_fallback_is_said_in_the_console(client_prv_run):
    out, _, lines = client_prv_run
    privacy = json.loads((out / rundir.PRIVACY).read_text())
    assert privacy["epsilon_accountant"] == "rdp" and privacy["epsilon_accountant_requested"] == "prv"
    assert "PRV was requested and fell back" in _final_eps(lines)[0]


def test_sat_out_over_budget_in_console_metrics_and_report(sample_run):
    out, _, lines = sample_run
    metrics = rundir.read_jsonl(out / rundir.METRICS)
    sat = [m["refused_by_budget"] for m in metrics]
    assert sum(sat) > 0, sat
    assert any("sat out (over budget)" in x for x in lines if x.startswith("round"))
    report = (out / rundir.REPORT).read_text()
    assert "| round | sampled | survivors | sat out over budget | aborted |" in report
    for m in metrics:
        assert f"| {m['round']} | {m['sampled']} | {m['survivors']} | {m['refused_by_budget']} |" in report


def test_report_has_config_privacy_terms_and_the_plot(sample_run):
    out, _, _ = sample_run
    report = (out / rundir.REPORT).read_text()
    for needed in ("## Configuration", "| rounds | 4 |", "| δ | 1e-05 |", "| unit of privacy | one example |",
                   "| neighbouring datasets |", "![", f"]({rundir.PLOTS})", "dpsgd_small (sample-level DP"):
        assert needed in report, needed


def test_report_command_rebuilds_it(sample_run, tmp_path, capsys):
    out = shutil.copytree(sample_run[0], tmp_path / "copy")
    original = (out / rundir.REPORT).read_text().replace("copy", "dpsgd_small")
    (out / rundir.REPORT).unlink()
    (out / rundir.PLOTS).unlink()
    assert cli_main(["report", str(out)]) == 0
    assert (out / rundir.REPORT).read_text().replace("copy", "dpsgd_small") == original
    assert (out / rundir.PLOTS).stat().st_size > 10_000


def test_report_of_a_directory_without_a_run_names_the_missing_file(tmp_path, capsys):
    assert cli_main(["report", str(tmp_path)]) == 2
    assert f"cannot read {tmp_path / rundir.CONFIG}" in capsys.readouterr().err


def test_plot_panels(sample_run, personal_run):
    from fl_core.run.plots import plot_run
    rep = load_report(personal_run[0])
    assert "no DP" in rep.title and rep.name == "pers"
    assert plot_run(personal_run[0] / "p.png", metrics=rep.metrics, title=rep.title,
                    personalization=rep.personalization) == ["test accuracy", "personalization"]  # no empty ε panel
    rep = load_report(sample_run[0])
    assert plot_run(sample_run[0] / "p.png", metrics=rep.metrics, title=rep.title,
                    target_epsilon=rep.target_epsilon) == ["test accuracy", "epsilon"]
    assert rep.target_epsilon == 4.0 and "unit: one example" in rep.title


def test_personalization_per_client_table(personal_run):
    out, _, lines = personal_run
    p = json.loads((out / rundir.PERSONALIZATION).read_text())
    clients = p["clients"]
    assert [c["client"] for c in clients] == list(range(20))
    assert all(c["train_examples"] > 0 and c["test_examples"] >= 1 for c in clients)
    assert p["worst10_min_test_examples"] == MIN_TEST_EXAMPLES
    counted = [c for c in clients if c["test_examples"] >= MIN_TEST_EXAMPLES]
    assert p["worst10_clients_counted"] == len(counted) < 20
    k = int(np.ceil(len(counted) / 10))
    assert p["worst10_global"] == pytest.approx(np.mean(sorted(c["global_accuracy"] for c in counted)[:k]))
    report = (out / rundir.REPORT).read_text()
    assert "| client | train examples | test examples | global accuracy | personalized accuracy |" in report
    c = clients[3]
    assert (f"| 3 | {c['train_examples']} | {c['test_examples']} | {c['global_accuracy']:.3f} | "
            f"{c['personalized_accuracy']:.3f} |") in report
    assert f"over the {len(counted)} clients with at least {MIN_TEST_EXAMPLES} test examples" in report


def test_worst_ten_percent_ignores_clients_with_too_few_test_examples():
    # one client with one test example scores 0; it must not decide the worst-10% figure alone
    rep = PersonalizationReport(global_acc=np.array([0.0] + [0.8] * 9), personal_acc=np.array([0.0] + [0.9] * 9),
                                train_sizes=np.full(10, 50), test_sizes=np.array([1] + [20] * 9))
    assert rep.worst10_global == pytest.approx(0.8) and rep.worst10_personal == pytest.approx(0.9)
    assert rep.clients_counted_in_worst10 == 9
