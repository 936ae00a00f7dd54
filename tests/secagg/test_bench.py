"""`python -m secagg.bench`: exact rounds, the floor's parts, active mode, and what it counts."""

import json

import pytest

from secagg.config import GraphKind, RoundConfig
from secagg.graph import choose_k_t
from secagg.tools import bench

SMALL = ["--clients", "12", "--dim", "3000", "--dropout", "0.1", "--repeats", "1"]


def test_bench_round_is_exact_and_reports_both_floors_and_the_cipher_cost(tmp_path):
    path = tmp_path / "r.json"
    assert bench.main(SMALL + ["--workers", "2", "--json", str(path)]) == 0
    r = json.loads(path.read_text())
    assert r["exact"] and r["workers"] == 2 and r["mode"] == "semi-honest"
    assert r["floor_seconds"] > 0 and r["floor_all_core_seconds"] > 0 and r["floor_aes128_seconds"] > 0
    assert r["ratio_to_floor"] == pytest.approx(r["round_seconds"] / r["floor_seconds"])
    assert r["aes256_cost_vs_aes128"] == pytest.approx(r["aes128_ctr_bytes_per_second"] / r["aes256_ctr_bytes_per_second"])
    assert set(r["stages"]) == {"keys", "shares", "masked_input", "consistency", "unmask"}
    assert sum(s["seconds"] for s in r["stages"].values()) == pytest.approx(r["round_seconds"], abs=1e-3)
    assert r["stages"]["consistency"]["upload_bytes"] == 0  # no stage 3 in semi-honest mode
    assert len(r["load_average"]) == 3


def test_bench_active_mode_runs_the_consistency_round(tmp_path):
    path = tmp_path / "a.json"
    assert bench.main(SMALL + ["--mode", "active", "--k", "8", "--threshold", "5", "--json", str(path)]) == 0
    r = json.loads(path.read_text())
    assert r["exact"] and r["mode"] == "active" and (r["k"], r["threshold"]) == (8, 5)
    assert r["stages"]["consistency"]["upload_bytes"] > 0


def test_bench_active_mode_takes_the_active_rule_with_its_corrupt_neighbours():
    k, t, c = bench.choose_round(100, graph=GraphKind.SPARSE, mode=bench.Mode.ACTIVE, dropout=0.1, corrupt=0.05,
                                 k=None, threshold=None)
    choice = choose_k_t(100, dropout=0.1, corrupt=0.05, active=True)
    assert (k, t, c) == (choice.k, choice.t, choice.corrupt_neighbours) == (26, 16, 5)
    assert bench.choose_round(100, graph=GraphKind.SPARSE, mode=bench.Mode.SEMI_HONEST, dropout=0.1, corrupt=0.05,
                              k=None, threshold=None) == (*choose_k_t(100, dropout=0.1, corrupt=0.05), 0)
    assert bench.choose_round(12, graph=GraphKind.SPARSE, mode=bench.Mode.ACTIVE, dropout=0.1, corrupt=0.05,
                              k=8, threshold=5) == (8, 5, 1)     # the most 2t > k + c allows


def test_bench_active_mode_reports_the_masked_input_signature_cost(tmp_path):
    path = tmp_path / "s.json"
    assert bench.main(SMALL + ["--mode", "active", "--json", str(path)]) == 0
    r = json.loads(path.read_text())
    sig = r["masked_input_signature"]
    assert r["exact"] and sig["dim"] == 3000 and sig["masked_inputs"] == r["survivors"]
    # hashing and signing are timed separately, so at this small d their order is noise
    assert sig["hash_seconds"] > 0 and sig["client_sign_seconds"] > 0 and sig["server_verify_seconds"] > 0
    assert sig["round_server_seconds"] == pytest.approx(sig["masked_inputs"] * sig["server_verify_seconds"])
    assert 0 < sig["share_of_round"] < 1
    assert r["max_corrupt_neighbours"] == choose_k_t(12, dropout=0.1, corrupt=0.05, active=True).corrupt_neighbours
    semi = bench.run(clients=12, dim=3000, dropout=0.1, graph="sparse", k=None, threshold=None, bits=32,
                     corrupt=0.05, seed=0, repeats=1)
    assert semi["masked_input_signature"] is None and semi["max_corrupt_neighbours"] == 0


def test_floor_work_counts_every_mask_and_agreement():
    # complete graph on 4 clients, nobody drops: 4 clients x (3 pairwise + 1 self) masks, the
    # server removes 4 self masks; 3 channel-key and 3 mask-key agreements per client
    cfg = RoundConfig.new(client_ids=range(4), dim=10, bits=32, threshold=2, min_survivors=2)
    everyone = (0, 1, 2, 3)
    survivors = {s.value: everyone for s in (bench.ProtocolStage.KEYS.collecting, bench.ProtocolStage.SHARES.collecting,
                                              bench.ProtocolStage.MASKED_INPUT.collecting)}
    assert bench.floor_work(cfg, survivors) == ((4 * 4 + 4) * 10 * 4, 4 * 3 + 4 * 3)
    # client 3 drops after sharing: 3 survivors x (3 + 1), 3 self + 3 of its pairwise masks removed
    survivors[bench.ProtocolStage.MASKED_INPUT.collecting.value] = (0, 1, 2)
    assert bench.floor_work(cfg, survivors) == ((3 * 4 + 3 + 3) * 10 * 4, 4 * 3 + 3 * 3 + 3)


@pytest.mark.parametrize("bad", [["--repeats", "0"], ["--workers", "0"]])
def test_bench_refuses_bad_counts(bad, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(SMALL + bad)
    assert e.value.code == 2


def test_readme_prints_the_active_rule_bench_results():
    """README's active-vs-semi-honest rows and the signature cost are those of the committed JSON."""
    from pathlib import Path
    root = Path(__file__).parents[2]
    readme = (root / "README.md").read_text()
    for name in ("secagg_n100_d1000000_v2", "secagg_n100_d1000000_active_rule"):
        r = json.loads((root / "benchmarks" / "results" / f"{name}.json").read_text())
        row = next(ln for ln in readme.splitlines() if f"`{name}.json`" in ln)
        cells = [c.strip() for c in row.strip("|").split("|")]
        c = "–" if r["mode"] == "semi-honest" else str(r["max_corrupt_neighbours"])
        assert cells[1:] == [f"{r['k']} / {r['threshold']} / {c}", str(r["exact"]), f"{r['round_seconds']:.2f}",
                             f"{r['floor_seconds']:.2f} / {r['floor_all_core_seconds']:.2f}",
                             f"{r['ratio_to_floor']:.2f}", f"{r['peak_rss_bytes'] / 2**20:.0f} MiB"]
        if r["mode"] == "active":
            assert (r["k"], r["threshold"], r["max_corrupt_neighbours"]) == (26, 16, 5)
            sig, flat = r["masked_input_signature"], " ".join(readme.split())
            assert f"{sig['round_server_seconds']:.2f} s for the {sig['masked_inputs']} inputs" in flat
            assert f"{100 * sig['share_of_round']:.1f} % of the active round" in flat
