"""End to end: the public API, neuron-level refinement, trajectories and the CLI on random models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

PROMPT = "The capital of France is Paris, and the capital of Italy is"


def _explain(lm, n=19, seed=0):
    from contrastlens.attribution.explain import explain

    ids = torch.randint(5, 500, (n,), generator=torch.Generator().manual_seed(seed)).tolist()
    return explain(lm, ids, target=11, contrast=17, keep_states=True)


def test_public_api(random_lm):
    import contrastlens as cl

    lm = random_lm("qwen3")
    g = cl.attribution_graph(lm, PROMPT, target=" Rome", contrast=" Paris", prune="cum_mass:0.85")
    assert isinstance(g, cl.AttributionGraph)
    assert g.layers == ["emb", "0.mid", "0", "1.mid", "1", "2.mid", "2"]
    assert g.meta["prune"] == "cum_mass:0.85"
    assert all(e.info["method"] in ("attn", "mlp") for e in g.edges.values())
    assert all(e.rows.dtype == np.int32 and e.vals.dtype == np.float32 for e in g.edges.values())
    sub = g.subgraph_to()
    assert sub.node_mask["2"].sum() == 1 and sub.num_edges() <= g.num_edges()
    m = sub.metrics()
    assert list(m.index) == g.layers and (m["nodes"] >= 0).all()


def test_layers_argument_and_errors(random_lm):
    from contrastlens.errors import InputError
    from contrastlens.graph.build import attribution_graph, parse_layers

    assert parse_layers("2,-1,0.mid", 3, True) == ["emb", "0.mid", "2"]
    assert parse_layers(None, 2, False) == ["emb", "0", "1"]
    for bad in ("emb", "emb,7", "emb,x", "emb,-2"):
        with pytest.raises(InputError):
            parse_layers(bad, 3, True)
    lm = random_lm("llama")
    with pytest.raises(InputError):
        attribution_graph(lm, PROMPT, " Rome", " Paris", method="fast")


def test_mixed_exact_and_replay_layers(random_lm):
    from contrastlens.graph.build import attribution_graph

    lm = random_lm("gemma3")
    ex = _explain(lm)
    g = attribution_graph(lm, explanation=ex, layers=["emb", "0", "1.mid", "1", "2"])
    kinds = {k: e.info["method"] for k, e in g.edges.items()}
    assert kinds == {("emb", "0"): "block", ("0", "1.mid"): "attn", ("1.mid", "1"): "mlp", ("1", "2"): "block"}
    gr = attribution_graph(lm, explanation=ex, layers=["emb", "0", "1.mid", "1", "2"], method="replay")
    for k in g.transitions:
        a, b = g.matrix(*k), gr.matrix(*k)
        assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max()


def test_neuron_refinement(random_lm):
    from contrastlens.graph.build import attribution_graph
    from contrastlens.graph.neurons import edge_dimensions, mlp_neurons, refine, state_dimensions

    lm = random_lm("qwen3")
    ex = _explain(lm)
    n = len(ex.input_ids)
    g = attribution_graph(lm, explanation=ex)
    # per-dimension relevance of a node sums to its R
    d = state_dimensions(ex, "1.mid", 5, top_k=1000)
    assert d.attrs["total"] == pytest.approx(float(g.relevance["1.mid"][5]), rel=1e-4, abs=1e-7)
    assert list(d["relevance"].abs()) == sorted(d["relevance"].abs(), reverse=True)
    # MLP neurons of block 1 at p sum to what the MLP adds there: R(1)[p] - (mid . g_out)[p]
    p = n - 1
    mlp = mlp_neurons(lm, ex, 1, p, top_k=5)
    mid = ex.states["1.mid"][0][p]
    out, gout = ex.states["1"]
    expected = float(((out[p] - mid) * gout[p]).sum())
    assert mlp.attrs["total"] == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert len(mlp) == 5 and mlp.attrs["size"] == lm.model.config.intermediate_size
    # an edge's per-dimension source relevance sums to the edge weight
    e = edge_dimensions(lm, ex, "0", "1.mid", j=p, i=3, top_k=3)
    assert e.attrs["total"] == pytest.approx(float(g.matrix("0", "1.mid")[p, 3]), rel=1e-4, abs=1e-7)
    r = refine(lm, ex, node=("1", p), top_k=4)
    assert set(r) == {"dimensions", "mlp_neurons"}
    r = refine(lm, ex, edge=(("1.mid", p), ("1", p)), top_k=4)
    assert set(r) == {"edge_dimensions", "mlp_neurons"}


def test_trajectories_and_plot(random_lm, tmp_path):
    from contrastlens.graph.build import attribution_graph
    from contrastlens.graph.trajectories import plot_trajectories, trajectories

    lm = random_lm("llama")
    g = attribution_graph(lm, explanation=_explain(lm))
    df = trajectories(g, top=3)
    assert set(df["layer"]) == set(g.layers)
    last = df[(df["pos"] == g.n - 1) & (df["layer"] == g.layers[-1])]
    assert float(last["relevance"].iloc[0]) == pytest.approx(g.logit_diff, rel=1e-4)
    # the 'to_final' edges of a token across one transition equal the matrix entries
    t = g.trajectory(2)
    for k, (s, u) in enumerate(g.transitions):
        assert t["to_final"].iloc[k] == pytest.approx(float(g.matrix(s, u)[g.n - 1, 2]))
    plot_trajectories(g, [1, 2], path=tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 1000


def test_cli(tmp_path, capsys):
    from contrastlens.cli.main import main

    out, html, csv = tmp_path / "g.json", tmp_path / "g.html", tmp_path / "m.csv"
    rc = main(["graph", "--model", "random:qwen3", "--prompt", PROMPT, "--target", " Rome", "--contrast", " Paris",
               "--prune", "cum_mass:0.85", "--out", str(out), "--html", str(html), "--metrics", str(csv),
               "--subgraph"])
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["graph"]["layers"][0] == "emb" and data["links"]
    assert html.read_text().startswith("<!DOCTYPE html>")
    assert "verticality" in csv.read_text()
    assert "attribution graph" in capsys.readouterr().out
    npz = tmp_path / "g.npz"
    assert main(["graph", "--model", "random:gpt2", "--prompt", PROMPT, "--target", "#5", "--contrast", "#6",
                 "--layers", "emb,0,2", "--out", str(npz), "--quiet"]) == 0
    from contrastlens.graph.graph import AttributionGraph

    g = AttributionGraph.load(npz)
    assert g.layers == ["emb", "0", "2"] and g.edges[("0", "2")].info["method"] == "replay"
    assert main(["graph", "--model", "random:qwen3", "--prompt", PROMPT, "--target", " Rome", "--contrast", " Paris",
                 "--prune", "mass:2"]) == 2
    assert main(["graph", "--model", "random:qwen3", "--prompt", PROMPT, "--target", " Rome", "--contrast", " Paris",
                 "--layers", "emb,9"]) == 2
