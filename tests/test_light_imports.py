"""``import secagg, dp, fl_core`` loads no heavy package: a protocol-only process (a Flower node
answering one message) starts without torch, Opacus, matplotlib or Flower."""

import json
import subprocess
import sys

HEAVY = ("torch", "opacus", "matplotlib", "flwr")


def _loaded_after(code: str) -> list[str]:
    probe = f"import sys, json\n{code}\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_three_packages_load_nothing_heavy():
    assert _loaded_after("import secagg, dp, fl_core") == []


def test_the_config_the_protocol_and_the_estimators_load_nothing_heavy():
    # the CLI's config checking, the secure round's building blocks and the audit's math
    assert _loaded_after("import fl_core.config, fl_core.cli, dp.empirical, dp.distributed, secagg.simulate") == []


def test_lazy_names_resolve_on_first_use():
    code = "import dp, fl_core\nassert dp.AccountantKind.RDP.value == 'rdp'\nassert fl_core.ConfigFieldError\nassert callable(fl_core.secure_aggregate)"
    assert _loaded_after(code) == []


def test_every_exported_name_resolves():
    import dp
    import fl_core
    import secagg

    for mod in (secagg, dp, fl_core):
        for name in mod.__all__:
            assert getattr(mod, name) is not None, (mod.__name__, name)
        assert set(mod.__all__) <= set(dir(mod))
