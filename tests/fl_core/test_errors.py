import pytest

from fl_core.errors import CheckpointError, ConfigFieldError, FLError, ShapeMismatchError, bad_field
from secagg.errors import SecAggError


def test_hierarchy():
    assert issubclass(FLError, SecAggError)
    for cls in (ConfigFieldError, ShapeMismatchError):
        assert issubclass(cls, FLError) and issubclass(cls, ValueError)
    assert issubclass(CheckpointError, FLError)


def test_config_field_error_names_every_field():
    e = ConfigFieldError([("data.alpha", "got -1.0; must be > 0"), ("local.lr", "got 'x'; must be a number")])
    assert e.fields == ["data.alpha", "local.lr"]
    msg = str(e)
    assert msg.splitlines() == ["2 invalid fields:", "  data.alpha: got -1.0; must be > 0",
                                "  local.lr: got 'x'; must be a number"]


def test_bad_field_quotes_value_and_parameter():
    e = bad_field("batch_size", 0, "must be a positive int")
    assert isinstance(e, ConfigFieldError)
    assert e.problems == [("batch_size", "got 0; must be a positive int")]
    assert str(e) == "invalid field batch_size: got 0; must be a positive int"
    with pytest.raises(ValueError, match="batch_size: got 0"):
        raise e


def test_shape_mismatch_names_layer():
    e = ShapeMismatchError("layer 'head.weight': bad", layer="head.weight")
    assert e.layer == "head.weight" and "head.weight" in str(e)
