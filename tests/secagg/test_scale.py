"""What makes a 10,000-client round fit: survivor checks that do not build n-sized sets per client,
peer keys dropped once spent, and a measured split of the peak between the server and the
simulation (benchmarks/secagg_memory.py)."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from secagg import wire
from secagg.client import ClientParty
from secagg.config import RoundConfig
from secagg.errors import RefusedRequestError, RemoteProtocolError
from secagg.messages import RevealedShare, ShareKind, UnmaskRequest, UnmaskResponse
from secagg.server import ServerParty

from .test_dishonest_server import Manual

ROOT = Path(__file__).resolve().parents[2]


def test_a_client_answers_the_same_to_bytes_and_to_the_object():
    """Bytes skip the object checks (decode made them); the reply must not differ."""
    r = Manual(6, t=3, active=False, seed=41)
    req = r.honest_until_inputs()[2]
    c = r.clients[req.receiver]
    twin = ClientParty.from_state(r.cfg, c.to_state())
    assert c.receive(wire.encode(req)) == twin.receive(req)


def test_an_object_request_with_an_unsorted_dropped_list_is_refused():
    r = Manual(6, t=2, active=False, seed=42)
    req = r.honest_until_inputs()[0]
    u = req.receiver
    others = [v for v in req.survivors if v != u]
    bad = UnmaskRequest(req.session_id, u, tuple(v for v in req.survivors if v not in others[:2]),
                        (others[1], others[0]))
    with pytest.raises(RefusedRequestError, match="dropped list is not strictly increasing"):
        r.clients[u].receive(bad)


def test_a_survivor_outside_a_non_contiguous_id_set_is_refused():
    ids = [3, 10, 17, 40, 41]
    cfg = RoundConfig.new(client_ids=ids, dim=4, bits=32, threshold=2, min_survivors=2)
    clients = {u: ClientParty(cfg, u) for u in ids}
    for c in clients.values():
        c.set_input(np.arange(4, dtype="<u4"))
    server = ServerParty(cfg)
    pending = [m for c in clients.values() for m in server.receive(wire.encode(c.start()))]
    pending = [m for p in pending for m in server.receive(wire.encode(clients[p.receiver].receive(wire.encode(p))))]
    requests = [m for p in pending for m in server.receive(wire.encode(clients[p.receiver].receive(wire.encode(p))))]
    req = requests[0]
    forged = UnmaskRequest(req.session_id, req.receiver, tuple(sorted(set(req.survivors) | {11})), ())
    with pytest.raises(RefusedRequestError, match=r"not in the round: \[11\]"):
        clients[req.receiver].receive(wire.encode(forged))


def test_clients_keep_no_peer_keys_once_masked_and_hold_their_shares():
    r = Manual(7, t=3, active=False, seed=43)
    r.honest_until_inputs()
    for u, c in r.clients.items():
        assert c._peers == {} and c._share_keys == {}
        assert set(c._held) == set(r.cfg.neighbours(u))


def test_the_server_rejects_a_key_share_of_a_survivor_with_its_sets_made_once():
    r = Manual(5, t=2, active=False, seed=44)
    req = r.honest_until_inputs()[0]
    u = req.receiver
    v = next(x for x in req.survivors if x != u)
    share = r.clients[u]._held[v][0]  # u's share of v's s^SK: never to be revealed for a survivor
    with pytest.raises(RemoteProtocolError, match="MASK_KEY share of"):
        r.server.receive(UnmaskResponse(req.session_id, u, (RevealedShare(v, ShareKind.MASK_KEY, share),)))


def test_memory_split_bench_reports_the_server_apart(tmp_path):
    spec = importlib.util.spec_from_file_location("secagg_memory", ROOT / "benchmarks" / "secagg_memory.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    path = tmp_path / "m.json"
    assert bench.main(["--clients", "60", "--dim", "300", "--json", str(path)]) == 0
    r = json.loads(path.read_text())
    assert [s["stage"] for s in r["stages"]] == ["collect-keys", "collect-shares", "collect-inputs", "collect-unmask"]
    shares = r["stages"][1]
    # the encrypted shares the server collected are what it forwards: gone from its state, all outgoing
    assert shares["server_state_bytes_before_close"] > 60 * 4 * wire.CIPHERTEXT_BYTES
    assert shares["server_outgoing_bytes"] > 60 * 4 * wire.CIPHERTEXT_BYTES
    assert shares["server_state_bytes_after_close"] < shares["server_state_bytes_before_close"] / 2
    assert 0 < r["server_peak_bytes"] < r["rss_at_close_max_bytes"] and r["survivors"] >= r["clients"] * 0.85


def test_deep_bytes_counts_each_object_once():
    spec = importlib.util.spec_from_file_location("secagg_memory", ROOT / "benchmarks" / "secagg_memory.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    blob = bytes(1000)
    one = bench.deep_bytes([blob], set())
    assert bench.deep_bytes([blob, blob, (blob,)], set()) < one + 200  # the second and third are references
    assert bench.deep_bytes([bytes(1000), bytes(999)], set()) > one + 900


def test_readme_prints_the_measured_10000_client_round():
    """README's n=10,000 row and memory split are those of the committed JSON files."""
    readme = (ROOT / "README.md").read_text()
    r = json.loads((ROOT / "benchmarks" / "results" / "secagg_n10000_d10000.json").read_text())
    row = next(ln for ln in readme.splitlines() if "`secagg_n10000_d10000.json`" in ln)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:7] == [f"{r['k']} / {r['threshold']}", str(r["exact"]), f"{r['round_seconds']:.1f}",
                          f"{r['floor_seconds']:.1f} / {r['floor_all_core_seconds']:.1f}", f"{r['ratio_to_floor']:.2f}",
                          f"{r['peak_rss_bytes'] / 2**20:.0f} MiB ({r['n_times_d_words_bytes'] / 2**20:.0f})"]
    flat = " ".join(readme.split())
    stages = r["stages"]
    assert (f"keys {stages['keys']['seconds']:.1f} ({stages['keys']['client_seconds']:.1f} + "
            f"{stages['keys']['server_seconds']:.1f})") in flat
    m = json.loads((ROOT / "benchmarks" / "results" / "secagg_memory_n10000_d10000.json").read_text())
    assert f"most {m['server_peak_bytes'] / 2**20:.0f} MiB" in flat
    assert f"{m['rss_before_round_bytes'] / 2**20:.0f} MiB before the round" in flat
