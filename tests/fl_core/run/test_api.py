"""fl_core.run with your own model and data: in code, and through config entries (CLI)."""

import json

import pytest
import torch

import fl_core
from fl_core.cli import main
from fl_core.config import config_from_dict, dump_config
from fl_core.errors import ConfigFieldError
from tests.fl_core.run.custom_parts import TwoLayer, blobs

QUIET = dict(progress=False, log=lambda m: None)
TABLE = {"rounds": 3, "clients_per_round": 4, "secure_randomness": False,
         "local": {"epochs": 1, "batch_size": 8, "lr": 0.1, "momentum": 0.0},
         "dp": {"mode": "client", "noise_multiplier": 0.5, "l2_clip": 1.0, "delta": 1e-3},
         "secagg": {"min_survivors": 0.5}}
ENTRIES = {"model": {"factory": "tests.fl_core.run.custom_parts:make_model"},
           "data": {"loader": "tests.fl_core.run.custom_parts:blobs"}}


def _with(table, extra):
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in table.items()}
    for k, v in extra.items():
        out[k] = {**out.get(k, {}), **v}
    return out


def test_own_model_class_and_data_train_and_are_recorded(tmp_path):
    s = fl_core.run(TABLE, tmp_path, model=TwoLayer, data=blobs(), **QUIET)
    assert s.rounds_run == 3 and s.final_accuracy > 0.5 and s.epsilon is not None  # 3 separable blobs
    state = torch.load(tmp_path / "model.pt")
    assert set(state) == {"body.0.weight", "body.0.bias", "head.weight", "head.bias"}
    assert "num_clients = 6" in (tmp_path / "config.resolved.toml").read_text()  # the data's own count


def test_config_entries_give_the_same_run_as_the_objects(tmp_path):
    a = fl_core.run(TABLE, tmp_path / "a", model=TwoLayer, data=blobs(), **QUIET)
    b = fl_core.run(_with(TABLE, ENTRIES), tmp_path / "b", **QUIET)
    assert [m["accuracy"] for m in a.metrics] == [m["accuracy"] for m in b.metrics]  # same seed, same run


def test_the_cli_takes_the_entries_from_a_toml_file(tmp_path):
    cfg = config_from_dict(_with(TABLE, ENTRIES))
    (tmp_path / "own.toml").write_text(dump_config(cfg))
    assert main(["run", "--config", str(tmp_path / "own.toml"), "--out", str(tmp_path / "out"),
                 "--no-progress"]) == 0
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["rounds_run"] == 3


def test_a_path_and_a_run_config_are_accepted_too(tmp_path):
    cfg = config_from_dict(_with(TABLE, ENTRIES))
    (tmp_path / "own.toml").write_text(dump_config(cfg))
    assert fl_core.run(tmp_path / "own.toml", tmp_path / "p", **QUIET).rounds_run == 3
    assert fl_core.run(cfg, tmp_path / "c", **QUIET).rounds_run == 3


@pytest.mark.parametrize("kw, extra, field", [
    ({"model": 3}, {}, "model"),
    ({"model": lambda: "net"}, {}, "model"),
    ({"data": "blobs"}, {}, "data"),
    ({}, {"model": {"factory": "tests.fl_core.run.custom_parts:missing"}}, "model.factory"),
    ({}, {"model": {"factory": "tests.fl_core.run.custom_parts:not_a_model"}}, "model.factory"),
    ({}, {"data": {"loader": "no.such.module:blobs"}}, "data.loader"),
    ({}, {"model": {"factory": "no colon"}}, "model.factory"),
    ({"data": blobs(num_clients=3)}, {}, "clients_per_round"),  # 4 per round from 3 clients
    ({"model": TwoLayer}, {"personalize": {"steps": 1, "personal_layers": ["tail"]}}, "personalize.personal_layers"),
])
def test_bad_model_or_data_is_named(tmp_path, kw, extra, field):
    kw = {"model": TwoLayer, "data": blobs(), **kw} if "factory" not in str(extra) and "loader" not in str(extra) \
        else kw
    with pytest.raises(ConfigFieldError) as e:
        fl_core.run(_with(TABLE, extra), tmp_path, **kw, **QUIET)
    assert e.value.fields == [field]
    assert not (tmp_path / "metrics.jsonl").exists()  # refused before anything ran


def test_config_must_be_a_config(tmp_path):
    with pytest.raises(ConfigFieldError) as e:
        fl_core.run(42, tmp_path, **QUIET)
    assert e.value.fields == ["config"]


def test_fl_core_run_is_callable_however_it_was_imported():
    import fl_core.run.loop as loop  # the subpackage is loaded: fl_core.run must still be the entry point
    from fl_core import run

    assert run is fl_core.run and callable(run) and loop.run is not None
