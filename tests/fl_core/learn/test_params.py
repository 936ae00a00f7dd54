import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn

from fl_core.errors import CheckpointError, ConfigFieldError, ShapeMismatchError
from fl_core.learn.models import build_model
from fl_core.learn.params import ParamSpec, load_pretrained, matches_prefix, model_to_vector, vector_to_model


class Tiny(nn.Module):
    def __init__(self, hidden=3):
        super().__init__()
        self.body = nn.Linear(2, hidden)
        self.head = nn.Linear(hidden, 2)
        self.header = nn.Linear(2, 1)  # shares the "head" text prefix but is not under "head."


def _set(model, values):
    with torch.no_grad():
        for p, v in zip(model.parameters(), values):
            p.copy_(torch.tensor(v, dtype=torch.float32))


def test_known_layout():
    # Order is named_parameters order; each tensor is flattened row-major (C order).
    m = nn.Linear(2, 3)
    _set(m, [[[1, 2], [3, 4], [5, 6]], [7, 8, 9]])
    np.testing.assert_array_equal(model_to_vector(m), np.arange(1, 10, dtype=np.float32))
    spec = ParamSpec.from_model(m)
    assert spec.names == ("weight", "bias") and spec.shapes == ((3, 2), (3,)) and spec.numel == 9
    assert spec.dtypes == ("float32", "float32")


@settings(max_examples=25, deadline=None)
@given(arrays(np.float32, 9 + 8 + 3,  # body 2x3+3, head 3x2+2, header 2x1+1
 elements=st.floats(-1e6, 1e6, width=32)))
def test_round_trip_exact(vec):
    m = Tiny()
    vector_to_model(vec, m)
    out = model_to_vector(m)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, vec)


def test_exclude_prefix_on_module_boundaries():
    m = Tiny()
    assert matches_prefix("head.weight", ("head",)) and not matches_prefix("header.weight", ("head",))
    spec = ParamSpec.from_model(m, exclude=("head",))
    assert spec.names == ("body.weight", "body.bias", "header.weight", "header.bias")
    head_before = m.head.weight.detach().clone()
    vec = np.ones(spec.numel, dtype=np.float32)
    vector_to_model(vec, m, exclude=("head",))
    assert torch.equal(m.head.weight, head_before)          # personal head untouched
    assert torch.all(m.body.weight == 1) and torch.all(m.header.bias == 1)
    assert model_to_vector(m, exclude=("head",)).size == 9 + 3  # body 2x3+3, header 2x1+1


def test_exclude_typo_is_an_error():
    with pytest.raises(ConfigFieldError, match="exclude"):
        model_to_vector(Tiny(), exclude=("haed",))
    with pytest.raises(ConfigFieldError, match="exclude"):
        model_to_vector(Tiny(), exclude="head")


def test_buffers_and_frozen_params_are_not_in_the_vector():
    m = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    m[0].bias.requires_grad_(False)
    # trainable: linear weight 12 + batchnorm weight 3 + bias 3; running stats are buffers
    assert model_to_vector(m).size == 12 + 3 + 3
    running = m[1].running_mean.clone()
    bias = m[0].bias.detach().clone()
    vector_to_model(np.full(18, 5.0, dtype=np.float32), m)
    assert torch.equal(m[1].running_mean, running) and torch.equal(m[0].bias, bias)


@pytest.mark.parametrize("vec", [
    np.zeros(19, dtype=np.float32),            # one short (Tiny has 9 + 8 + 3 = 20 parameters)
    np.zeros(21, dtype=np.float32),            # one long
    np.zeros(20, dtype=np.float64),            # wrong dtype
    np.zeros((1, 20), dtype=np.float32),       # not 1-D
    torch.zeros(20, dtype=torch.float16),
])
def test_wrong_vector_refused(vec):
    m = Tiny()
    before = model_to_vector(m)
    with pytest.raises(ShapeMismatchError):
        vector_to_model(vec, m)
    np.testing.assert_array_equal(model_to_vector(m), before)


def test_torch_vector_accepted():
    m = Tiny()
    vector_to_model(torch.arange(20, dtype=torch.float32), m)
    np.testing.assert_array_equal(model_to_vector(m), np.arange(20, dtype=np.float32))


def test_spec_catches_same_size_other_layout():
    a = nn.Sequential(nn.Linear(4, 2))          # 8 + 2 = 10
    b = nn.Sequential(nn.Linear(2, 3), nn.Linear(1, 1))  # first layer already differs in shape
    c = nn.Sequential(nn.Linear(2, 4))          # 8 + 4 = 12
    spec_a = ParamSpec.from_model(a)
    with pytest.raises(ShapeMismatchError) as e:
        spec_a.check(ParamSpec.from_model(c))
    assert e.value.layer == "0.weight"
    d = nn.Sequential(nn.Linear(5, 2))
    with pytest.raises(ShapeMismatchError, match="0.weight"):
        vector_to_model(np.zeros(12, dtype=np.float32), d, spec=spec_a)
    with pytest.raises(ShapeMismatchError):
        spec_a.check(ParamSpec.from_model(b))


def test_load_pretrained_round_trip(tmp_path):
    src = build_model("mlp", seed=1)
    torch.save(src.state_dict(), tmp_path / "w.pt")
    dst = build_model("mlp", seed=2)
    load_pretrained(dst, tmp_path / "w.pt")
    np.testing.assert_array_equal(model_to_vector(dst), model_to_vector(src))


def test_load_pretrained_shape_mismatch_names_layer(tmp_path):
    torch.save(build_model("mlp", hidden=32, seed=1).state_dict(), tmp_path / "w.pt")
    dst = build_model("mlp", hidden=64, seed=2)
    before = model_to_vector(dst)
    with pytest.raises(ShapeMismatchError) as e:
        load_pretrained(dst, tmp_path / "w.pt")
    assert e.value.layer == "body.1.weight" and "(32, 64)" in str(e.value) and "(64, 64)" in str(e.value)
    np.testing.assert_array_equal(model_to_vector(dst), before)  # nothing loaded


def test_load_pretrained_other_head(tmp_path):
    src = build_model("mlp", num_classes=5, seed=1)
    torch.save(src.state_dict(), tmp_path / "w.pt")
    dst = build_model("mlp", num_classes=10, seed=2)
    with pytest.raises(ShapeMismatchError) as e:
        load_pretrained(dst, tmp_path / "w.pt")
    assert e.value.layer == "head.weight"
    head = dst.head.weight.detach().clone()
    load_pretrained(dst, tmp_path / "w.pt", exclude=("head",))  # body only, new head kept
    assert torch.equal(dst.body[1].weight, src.body[1].weight) and torch.equal(dst.head.weight, head)


def test_load_pretrained_missing_and_extra_keys(tmp_path):
    sd = build_model("mlp", seed=1).state_dict()
    missing = {k: v for k, v in sd.items() if k != "head.bias"}
    torch.save(missing, tmp_path / "m.pt")
    with pytest.raises(ShapeMismatchError) as e:
        load_pretrained(build_model("mlp"), tmp_path / "m.pt")
    assert e.value.layer == "head.bias"
    torch.save({**sd, "extra.weight": torch.zeros(1)}, tmp_path / "x.pt")
    with pytest.raises(ShapeMismatchError) as e:
        load_pretrained(build_model("mlp"), tmp_path / "x.pt")
    assert e.value.layer == "extra.weight"


class _Evil:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_load_pretrained_bad_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_pretrained(build_model("mlp"), tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError):
        load_pretrained(build_model("mlp"), tmp_path / "junk.pt")
    torch.save({"w": _Evil()}, tmp_path / "evil.pt")   # weights_only refuses arbitrary objects
    with pytest.raises(CheckpointError):
        load_pretrained(build_model("mlp"), tmp_path / "evil.pt")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="state_dict"):
        load_pretrained(build_model("mlp"), tmp_path / "list.pt")
