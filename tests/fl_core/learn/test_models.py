import pytest
import torch

from fl_core.errors import ConfigFieldError
from fl_core.learn.models import PERSONAL_HEAD, ModelName, build_model


def _count(m):
    return sum(p.numel() for p in m.parameters())


# Parameter counts derived by hand from the layer sizes:
# mlp 64->64->10: 64*64+64 + 64*10+10 = 4810
# cnn28: conv 1->16 5x5: 16*25+16 = 416; conv 16->32 5x5: 32*16*25+32 = 12832;
#        linear 32*7*7 -> 64: 1568*64+64 = 100416; head 64*10+10 = 650; total 114314
# conv1d (length 40): conv 1->16 k3: 16*3+16 = 64; conv 16->16 k3: 16*16*3+16 = 784;
#        length 40 -> 20 -> 10, linear 160 -> 64: 160*64+64 = 10304; head 650; total 11802
@pytest.mark.parametrize("name, kw, x_shape, n_params", [
    ("mlp", dict(in_features=64), (5, 64), 4810),
    ("mlp", dict(in_features=64), (5, 8, 8), 4810),
    ("cnn28", {}, (3, 1, 28, 28), 114314),
    ("cnn28", {}, (3, 28, 28), 114314),
    ("conv1d", dict(in_features=40), (4, 40), 11802),
])
def test_shapes_and_sizes(name, kw, x_shape, n_params):
    m = build_model(name, seed=0, **kw)
    assert _count(m) == n_params
    assert m(torch.zeros(x_shape)).shape == (x_shape[0], 10)
    assert list(m.buffers()) == []  # nothing that would need a buffer policy
    assert any(n.startswith(PERSONAL_HEAD[0] + ".") for n, _ in m.named_parameters())


def test_seed_is_deterministic_and_leaves_global_rng_alone():
    before = torch.get_rng_state()
    a = build_model(ModelName.MLP, seed=7)
    b = build_model("mlp", seed=7)
    c = build_model("mlp", seed=8)
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.head.weight, c.head.weight)


@pytest.mark.parametrize("kw, field", [
    (dict(name="resnet"), "name"),
    (dict(name="mlp", hidden=0), "hidden"),
    (dict(name="mlp", num_classes=1), "num_classes"),
    (dict(name="conv1d", in_features=2), "in_features"),
])
def test_bad_arguments(kw, field):
    with pytest.raises(ConfigFieldError) as e:
        build_model(**kw)
    assert e.value.fields == [field]


def test_the_parameter_table_the_config_checks_against_is_the_models():
    from fl_core.learn.names import DATASET_FEATURES, MODEL_PARAMETERS, DatasetName, ModelName

    for name in ModelName:
        feats = DATASET_FEATURES[DatasetName.MNIST1D] if name is ModelName.CONV1D else 64
        model = build_model(name, in_features=feats, hidden=8, seed=0)
        assert tuple(n for n, _ in model.named_parameters()) == MODEL_PARAMETERS[name], name
