import dataclasses
import math
import tomllib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fl_core.learn.client import OptimizerName
from fl_core.config import (
    DPConfig,
    DPMode,
    LocalConfig,
    RunConfig,
    config_from_dict,
    dump_config,
    load_config,
)
from fl_core.learn.data import DatasetName
from fl_core.errors import ConfigFieldError
from fl_core.learn.strategy import make_server_optimizer


def _load(tmp_path, text, **kw):
    p = tmp_path / "run.toml"
    p.write_text(text)
    return load_config(p, **kw)


def _fields(tmp_path, text):
    with pytest.raises(ConfigFieldError) as e:
        _load(tmp_path, text)
    return e.value.fields, str(e.value)


def test_defaults_are_the_default_example():
    cfg = RunConfig()
    assert cfg.data.dataset is DatasetName.DIGITS and 10 <= cfg.data.num_clients <= 20
    assert cfg.dp.mode is DPMode.CLIENT and cfg.secagg.enabled
    assert config_from_dict({}) == cfg


def test_minimal_file(tmp_path):
    cfg = _load(tmp_path, 'rounds = 5\n[data]\nnum_clients = 12\n[dp]\ntarget_epsilon = 3\n')
    assert cfg.rounds == 5 and cfg.data.num_clients == 12
    assert cfg.dp.target_epsilon == 3.0 and isinstance(cfg.dp.target_epsilon, float)  # int -> float


def test_every_bad_field_is_named(tmp_path):
    text = """
rounds = 0
colour = "blue"
[data]
dataset = "cifar"
alpha = -1
[local]
lr = "fast"
batch_size = 1.5
[server]
optimizer = "sgd"
[dp]
delta = 2.0
[secagg.dropout]
keys = 1.0
[nonsense]
x = 1
"""
    fields, msg = _fields(tmp_path, text)
    assert sorted(fields) == sorted(["rounds", "colour", "data.dataset", "data.alpha", "local.lr",
                                     "local.batch_size", "server.optimizer", "dp.delta",
                                     "secagg.dropout.keys", "nonsense"])
    assert "'cifar'" in msg and "-1" in msg and "'fast'" in msg and "unknown key" in msg
    assert len(fields) == len(set(fields))  # each field once


@pytest.mark.parametrize("text, field", [
    ("rounds = true", "rounds"),                                        # bool is not an int
    ("seed = -1", "seed"),
    ("clients_per_round = 30", "clients_per_round"),                    # > num_clients = 20
    ("sampling_rate = 1.5", "sampling_rate"),
    ("[local]\nsteps = 5\nepochs = 1", "local.steps"),                  # both of a one-of pair
    ("[local]\noptimizer = 'adam'", "local.momentum"),                  # default momentum 0.9 with Adam
    ("[data]\ndataset = 'synthetic'", "data.partition"),
    ("[data]\npartition = 'natural'", "data.partition"),
    ("[data]\npublic_fraction = 0.8", "data.public_fraction"),           # + test 0.2 leaves nothing
    ("[model]\nname = 'cnn28'", "model.name"),
    ("[secagg]\nenabled = false", "dp.mode"),                           # client DP needs secagg
    ("[dp]\ndelta = 0.1", "dp.delta"),                                  # >= 1 / 20 clients
    ("[dp]\ntarget_epsilon = 9\nepsilon_budget = 8", "dp.target_epsilon"),
    ("[dp]\nbits = 40\n[secagg]\nbits = 32", "dp.bits"),
    ("[dp]\ngrad_sample_mode = 'magic'", "dp.grad_sample_mode"),
    ("[dp]\nmode = 'sample'\n[local]\nprox_mu = 0.1", "local.prox_mu"),
    ("[secagg]\nk = 4", "secagg.k"),                                    # k only with sparse
    ("[secagg]\ngraph = 'sparse'\nk = 5", "secagg.k"),                  # odd degree
    ("[secagg]\nbits = 63", "secagg.bits"),
    ("[secagg]\nthreshold = 0", "secagg.threshold"),
    ("clients_per_round = 3\n[secagg]\nmin_survivors = 0.3", "secagg.min_survivors"),
    ("clients_per_round = 2\n[secagg]\nmin_survivors = 1.0", "clients_per_round"),  # secagg: t >= 2 shares
    ("[init]\nmode = 'pretrained'", "init.checkpoint"),
    ("[init]\ncheckpoint = 'w.pt'", "init.checkpoint"),                 # set with mode random
    ("[init]\nmode = 'pretrained'\ncheckpoint = 'missing.pt'", "init.checkpoint"),
    ("[personalize]\nevery = 2", "personalize.every"),                  # needs steps
    ("[personalize]\nsteps = 5\npersonal_layers = ['haed']", "personalize.personal_layers"),
    ("[personalize]\nsteps = 5\npersonal_layers = ['body', 'head']", "personalize.personal_layers"),
    ("[personalize]\npersonal_layers = 'head'", "personalize.personal_layers"),
    ("[data]\nnum_clients = 'ten'", "data.num_clients"),
    ("data = 3", "data"),
])
def test_single_problems(tmp_path, text, field):
    fields, msg = _fields(tmp_path, text)
    assert fields == [field], msg


def test_toml_syntax_error_is_a_config_error(tmp_path):
    fields, msg = _fields(tmp_path, "rounds = = 3")
    assert "TOML syntax error" in msg and fields[0].endswith("run.toml")
    with pytest.raises(ConfigFieldError, match="cannot read"):
        load_config(tmp_path / "absent.toml")


def test_one_of_pairs(tmp_path):
    cfg = _load(tmp_path, "sampling_rate = 0.25\n[local]\nsteps = 10\n[dp]\nnoise_multiplier = 1.1\n")
    assert cfg.clients_per_round is None and cfg.sampling_rate == 0.25
    assert cfg.expected_clients_per_round() == 5.0  # 0.25 * 20 clients
    assert cfg.local.epochs is None and cfg.local.steps == 10
    assert cfg.dp.target_epsilon is None and cfg.dp.noise_multiplier == 1.1


def test_pretrained_path_is_resolved_against_the_config_folder(tmp_path):
    (tmp_path / "w.pt").write_bytes(b"x")
    cfg = _load(tmp_path, "[init]\nmode = 'pretrained'\ncheckpoint = 'w.pt'\n")
    assert cfg.init.checkpoint == str((tmp_path / "w.pt").resolve())


def test_constructing_in_code_checks_too():
    # sections check themselves when built; given as tables, every bad field of the run at once
    with pytest.raises(ConfigFieldError) as e:
        RunConfig(rounds=0, local={"lr": -1.0}, dp={"delta": 0.0})
    assert e.value.fields == ["rounds", "local.lr", "dp.delta"]
    with pytest.raises(ConfigFieldError) as e:
        LocalConfig(lr=-1.0, batch_size=0)
    assert e.value.fields == ["lr", "batch_size"]
    with pytest.raises(ConfigFieldError) as e:  # cross-field rules too, beside the field problems
        RunConfig(rounds=0, clients_per_round=30, dp=DPConfig(delta=0.1))
    assert e.value.fields == ["rounds", "clients_per_round", "dp.delta"]
    ok = RunConfig(dp=DPConfig(mode=DPMode.NONE, target_epsilon=None))  # no noise needed without DP
    assert ok.dp.mode is DPMode.NONE
    assert dataclasses.replace(ok, rounds=3).rounds == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        ok.rounds = 4


def test_server_hparams_feed_the_optimizer(tmp_path):
    cfg = _load(tmp_path, "[server]\noptimizer = 'fedadam'\nlr = 0.03\ntau = 0.01\n")
    hp = cfg.server.hparams()
    assert hp == {"lr": 0.03, "beta1": 0.9, "beta2": 0.99, "tau": 0.01}
    assert make_server_optimizer(cfg.server.optimizer, **hp).hparams == hp
    assert RunConfig().server.hparams() == {"lr": 1.0}


@pytest.mark.parametrize("text", [
    "",
    "rounds = 3\nsampling_rate = 0.5\nseed = 123456789012\n[local]\nsteps = 4\noptimizer = 'adam'\nmomentum = 0.0\n"
    "[server]\noptimizer = 'fedyogi'\ntau = 1e-6\n[dp]\nmode = 'sample'\nnoise_multiplier = 0.7\nepsilon_budget = 3.5\n"
    "[secagg]\ngraph = 'sparse'\nk = 4\nthreshold = 0.75\n[secagg.dropout]\nunmask = 0.1\n"
    "[personalize]\nsteps = 5\nevery = 2\npersonal_layers = ['head']\nlr = 0.01\n",
    "[data]\ndataset = 'mnist1d'\npartition = 'dirichlet'\nalpha = 0.1\n[model]\nname = 'conv1d'\n[dp]\nmode = 'none'\n",
    "[data]\ndataset = 'synthetic'\npartition = 'natural'\nsynthetic_alpha = 0.5\n",
])
def test_dump_then_load_round_trip(tmp_path, text):
    cfg = _load(tmp_path, text)
    dumped = dump_config(cfg)
    (tmp_path / "again.toml").write_text(dumped)
    assert load_config(tmp_path / "again.toml") == cfg


def test_dump_round_trips_pretrained_path(tmp_path):
    (tmp_path / "w \"x\".pt").write_bytes(b"x")
    cfg = _load(tmp_path, "[init]\nmode = 'pretrained'\ncheckpoint = 'w \"x\".pt'\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "again.toml").write_text(dump_config(cfg))
    assert load_config(tmp_path / "sub" / "again.toml") == cfg  # absolute path, folder-independent


_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters=": \t\n\r\x0b\x0c"
                                     "\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2028\u2029\u3000"), min_size=1, max_size=8)


@settings(max_examples=100, deadline=None)
@given(lr=st.floats(min_value=1e-300, max_value=1e300), seed=st.integers(0, 2**63 - 1),
       drop=st.floats(min_value=0, max_value=1, exclude_max=True), module=_TEXT, function=_TEXT)
def test_dump_round_trips_any_valid_value(lr, seed, drop, module, function):
    # floats at any magnitude, the largest seed, and strings with quotes, backslashes and unicode
    cfg = config_from_dict({"seed": seed, "local": {"lr": lr}, "secagg": {"dropout": {"keys": drop}},
                            "data": {"loader": f"{module}:{function}"}})
    assert config_from_dict(tomllib.loads(dump_config(cfg))) == cfg


def test_non_finite_numbers_are_refused_not_written():
    for v in (math.nan, math.inf):
        with pytest.raises(ConfigFieldError) as e:
            config_from_dict({"local": {"lr": v}})
        assert e.value.fields == ["local.lr"]


def test_enums_in_config_are_the_library_enums(tmp_path):
    cfg = _load(tmp_path, "[local]\noptimizer = 'adam'\nmomentum = 0.0\n")
    assert cfg.local.optimizer is OptimizerName.ADAM


def test_sections_build_what_they_describe(tmp_path):
    import numpy as np

    from fl_core.learn.params import model_to_vector

    cfg = _load(tmp_path, "clients_per_round = 5\n[data]\nnum_clients = 7\npartition = 'shards'\n[model]\nhidden = 16\n")
    fds = cfg.data.load(rng=np.random.default_rng(0))
    assert fds.num_clients == 7 and fds.name == "digits"
    m = cfg.model.build(in_features=fds.in_features, seed=0)
    assert model_to_vector(m).size == 64 * 16 + 16 + 16 * 10 + 10  # MLP 64 -> 16 -> 10
