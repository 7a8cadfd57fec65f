"""The graph object on hand-built graphs: subgraph, metrics (values computed by hand), exports."""

from __future__ import annotations

import json

import numpy as np
import pytest

from contrastlens.graph.graph import AttributionGraph, Edges
from contrastlens.graph.metrics import gini, top_mass_count


def hand_graph() -> AttributionGraph:
    """3 tokens, layers emb -> 0.mid -> 0.

    emb -> 0.mid:  (0,0)=1.0  (1,1)=0.5  (2,0)=-2.0  (2,2)=1.0
    0.mid -> 0:    (2,2)=3.0  (1,1)=0.25
    """
    rel = {"emb": np.array([-1.0, 0.5, 1.0]), "0.mid": np.array([1.0, 0.25, 3.0]), "0": np.array([0.0, 0.0, 3.0])}
    edges = {
        ("emb", "0.mid"): Edges([0, 1, 2, 2], [0, 1, 0, 2], [1.0, 0.5, -2.0, 1.0]),
        ("0.mid", "0"): Edges([1, 2], [1, 2], [0.25, 3.0]),
    }
    return AttributionGraph(["emb", "0.mid", "0"], ["a", "b", "c"], rel, edges, 3.0, meta={"method": "hand"})


def test_matrix_and_basics():
    g = hand_graph()
    A = g.matrix("emb", "0.mid")
    assert A.dtype == np.float32 and A.shape == (3, 3)
    assert A[2, 0] == -2.0 and A[0, 2] == 0.0
    assert g.transitions == [("emb", "0.mid"), ("0.mid", "0")]
    assert g.num_edges() == 6 and g.final_node == ("0", 2)


def test_subgraph_to_final_node():
    g = hand_graph().subgraph_to()
    # ancestors of (0, 2): (0.mid, 2) -> (emb, 0), (emb, 2); (0.mid,1) and (emb,1) are not ancestors
    assert g.nodes("0").tolist() == [2]
    assert g.nodes("0.mid").tolist() == [2]
    assert g.nodes("emb").tolist() == [0, 2]
    assert len(g.edges[("0.mid", "0")]) == 1
    e = g.edges[("emb", "0.mid")]
    assert sorted(zip(e.rows.tolist(), e.cols.tolist(), strict=True)) == [(2, 0), (2, 2)]
    nx_graph = g.to_networkx()
    assert set(nx_graph.nodes) == {("0", 2), ("0.mid", 2), ("emb", 0), ("emb", 2)}
    import networkx as nx

    full = hand_graph().to_networkx()
    assert nx.ancestors(full, ("0", 2)) | {("0", 2)} == set(nx_graph.nodes)


def test_subgraph_to_inner_node():
    g = hand_graph().subgraph_to(("0.mid", 1))
    assert g.nodes("emb").tolist() == [1] and g.nodes("0").tolist() == []
    assert len(g.edges[("0.mid", "0")]) == 0


def test_prune_methods():
    g = hand_graph()
    p = g.prune("threshold", tau=1.0)
    assert len(p.edges[("emb", "0.mid")]) == 3 and len(p.edges[("0.mid", "0")]) == 1
    c = g.prune("cum_mass", p=0.5)  # emb->0.mid: |w| 2,1,1,.5 total 4.5; 2.25 needs 2 and 1 -> tau 1
    assert len(c.edges[("emb", "0.mid")]) == 3
    assert c.edges[("emb", "0.mid")].info["threshold"] == 1.0


def test_gini_and_top_mass_by_hand():
    assert gini([1, 1, 1, 1]) == 0.0
    assert gini([0, 0, 0, 4]) == pytest.approx(0.75)  # (2*4-4-1)*4 / (4*4) = 3/4
    assert gini([1, 2, 3]) == pytest.approx((-2 * 1 + 0 * 2 + 2 * 3) / (3 * 6))
    assert gini([]) == 0.0
    assert top_mass_count([5, 3, 1, 1], 0.9) == 3
    assert top_mass_count([9, 1], 0.9) == 1


def test_metrics_by_hand():
    m = hand_graph().metrics()
    r = m.loc["0.mid"]
    assert r["nodes"] == 3 and r["edges_in"] == 4 and r["edges_out"] == 2
    assert r["fan_in"] == pytest.approx(4 / 3) and r["fan_out"] == pytest.approx(2 / 3)
    assert r["edge_density"] == pytest.approx(4 / 6)
    # verticality: same-position |w| = 1 + .5 + 1 = 2.5 of 4.5
    assert r["verticality"] == pytest.approx(2.5 / 4.5)
    # look-back: 0, 0, 2, 0 -> mean 0.5, local ratio 3/4
    assert r["mean_lookback"] == pytest.approx(0.5) and r["local_ratio"] == pytest.approx(0.75)
    # centre of mass of |R| = (0*1 + 1*.25 + 2*3) / 4.25
    assert r["centre_of_mass"] == pytest.approx(6.25 / 4.25)
    assert r["mean_abs_R"] == pytest.approx(4.25 / 3)
    assert r["gini_R"] == pytest.approx(gini([1.0, 0.25, 3.0]))
    assert r["gini_w_in"] == pytest.approx(gini([1.0, 0.5, 2.0, 1.0]))
    assert r["top90_nodes"] == 2  # 3 + 1 = 4 >= 0.9 * 4.25
    # in-degrees 1, 1, 2: mean 4/3, std .471 -> threshold 1.80: one hub (position 2)
    assert r["hubs_in"] == 1
    from contrastlens.graph.metrics import core_nodes, hub_nodes

    g = hand_graph()
    assert hub_nodes(g, "0.mid", "in") == [2] and hub_nodes(g, "emb", "in") == []
    assert core_nodes(g, "0.mid", 0.9) == [2, 0] and core_nodes(g, "emb", 0.5) == [0, 2]
    e = m.loc["emb"]
    assert e["edges_in"] == 0 and np.isnan(e["verticality"]) and e["edges_out"] == 4
    assert m.loc["0"]["verticality"] == 1.0


def test_trajectory_by_hand():
    from contrastlens.graph.trajectories import token_trajectory

    t = token_trajectory(hand_graph(), 0)
    assert t["relevance"].tolist() == [-1.0, 1.0, 0.0]
    assert t["to_final"].tolist()[:2] == [-2.0, 0.0]  # (emb,0)->(0.mid,2) = -2; (0.mid,0)->(0,2) absent
    assert t["to_final_share"].iloc[0] == pytest.approx(-2.0 / 3.0)
    assert t["increment"].iloc[1] == pytest.approx(2.0)


def test_save_load_and_node_link(tmp_path):
    g = hand_graph().subgraph_to()
    path = g.save(tmp_path / "g.npz")
    h = AttributionGraph.load(path)
    assert h.layers == g.layers and h.tokens == g.tokens and h.logit_diff == g.logit_diff
    for k in g.transitions:
        np.testing.assert_array_equal(h.matrix(*k), g.matrix(*k))
    for layer in g.layers:
        np.testing.assert_array_equal(h.node_mask[layer], g.node_mask[layer])
        np.testing.assert_array_equal(h.relevance[layer], g.relevance[layer])
    data = json.loads(g.to_json(tmp_path / "g.json"))
    assert {n["id"] for n in data["nodes"]} == {"0@2", "0.mid@2", "emb@0", "emb@2"}
    assert {(x["source"], x["target"]) for x in data["links"]} == {("emb@0", "0.mid@2"), ("emb@2", "0.mid@2"),
                                                                   ("0.mid@2", "0@2")}
    import networkx as nx

    G = nx.node_link_graph(data, edges="links")
    assert G.number_of_edges() == 3


def test_load_rejects_other_files(tmp_path):
    from contrastlens.errors import InputError

    bad = tmp_path / "x.npz"
    np.savez(bad, a=np.zeros(2))
    with pytest.raises(InputError):
        AttributionGraph.load(bad)


def test_html_is_self_contained():
    html = hand_graph().to_html()
    assert html.startswith("<!DOCTYPE html>") and "<svg" in html
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "") and "<script" not in html
