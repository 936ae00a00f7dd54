"""A run config from a TOML-shaped base dict with section-wise overrides, for the run tests."""

import json

from fl_core.config import config_from_dict


def config_with(base: dict, **over):
    """``base`` deep-copied, each dict override merged into its section, other values replaced."""
    d = json.loads(json.dumps(base))
    for k, v in over.items():
        if isinstance(v, dict):
            d.setdefault(k, {}).update(v)
        else:
            d[k] = v
    return config_from_dict(d)
