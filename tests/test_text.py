"""Text encoders: MiniLM against the sentence-transformers reference, the embedding cache, prompt checks."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from att3d import text
from att3d.limits import PromptError
from att3d.text import (
    CachedEncoder,
    MiniLMEncoder,
    TextEncoder,
    get_text_encoder,
    minilm_model_dir,
    register_text_encoder,
    uncached,
)

PROMPTS = [
    "a red cube",
    "a cube that is red",
    "a photograph of an astronaut riding a horse on the moon, highly detailed, 4k",
    "torus",
    # Longer than the 256-token window: checks truncation matches the reference.
    "a small blue cone " * 80,
]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def minilm():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        encoder = MiniLMEncoder(batch_size=2)  # small batches: padding differs between batches
        encoder.load()
        yield encoder


@pytest.fixture(scope="module")
def minilm_embeddings(minilm):
    return minilm.encode(PROMPTS)


class FakeEncoder:
    """Deterministic stand-in that records every call."""

    def __init__(self, id: str = "fake/encoder v1", dim: int = 4):
        self.id = id
        self.dim = dim
        self.calls: list[list[str]] = []

    def encode(self, prompts: list[str]) -> torch.Tensor:
        self.calls.append(list(prompts))
        rows = []
        for prompt in prompts:
            seed = int(hashlib.sha256(f"{self.id}|{prompt}".encode()).hexdigest()[:8], 16)
            rows.append(torch.randn(self.dim, generator=torch.Generator().manual_seed(seed)))
        return torch.stack(rows) if rows else torch.empty(0, self.dim)


# --------------------------------------------------------------------------------------------------
# MiniLM
# --------------------------------------------------------------------------------------------------


def test_minilm_shape_dtype_norm(minilm_embeddings):
    assert minilm_embeddings.shape == (len(PROMPTS), 384)
    assert minilm_embeddings.dtype == torch.float32
    assert minilm_embeddings.device.type == "cpu"
    torch.testing.assert_close(minilm_embeddings.norm(dim=1), torch.ones(len(PROMPTS)), atol=1e-5, rtol=0)


def test_minilm_matches_sentence_transformers(minilm_embeddings):
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(minilm_model_dir()), device="cpu")
    expected = torch.as_tensor(reference.encode(PROMPTS, convert_to_numpy=True))
    torch.testing.assert_close(minilm_embeddings, expected, atol=1e-5, rtol=0)


def test_minilm_batching_does_not_change_embeddings(minilm, minilm_embeddings):
    # Each prompt alone (no padding) must give the same vector as inside a padded batch.
    alone = torch.cat([minilm.encode([p]) for p in PROMPTS])
    torch.testing.assert_close(alone, minilm_embeddings, atol=1e-5, rtol=0)


def test_minilm_similar_prompts_are_closer(minilm_embeddings):
    similarity = minilm_embeddings @ minilm_embeddings.T
    assert similarity[0, 1] > 0.8
    assert similarity[0, 1] > similarity[0, 2] + 0.3
    assert similarity[0, 1] > similarity[0, 3]


def test_minilm_is_lazy_and_satisfies_protocol():
    encoder = MiniLMEncoder()
    assert isinstance(encoder, TextEncoder)
    assert (encoder.id, encoder.dim) == ("all-MiniLM-L6-v2", 384)
    assert not encoder.loaded
    assert encoder.encode([]).shape == (0, 384)
    assert not encoder.loaded  # nothing to encode, nothing loaded


def test_encode_rejects_a_bare_string(minilm):
    with pytest.raises(PromptError, match="list of strings, got str"):
        minilm.encode("a red cube")
    with pytest.raises(PromptError, match=r"prompts\[1\] must be a string, got int"):
        minilm.encode(["a red cube", 3])


# --------------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------------


def test_cache_hit_does_not_call_the_encoder(tmp_path):
    fake = FakeEncoder()
    cached = CachedEncoder(fake, tmp_path)
    first = cached.encode(["a", "b", "a"])
    assert fake.calls == [["a", "b"]]  # duplicates encoded once
    torch.testing.assert_close(first[0], first[2])
    torch.testing.assert_close(first, fake.encode(["a", "b", "a"]))
    fake.calls.clear()

    assert torch.equal(cached.encode(["b", "a"]), first[[1, 0]])  # memory hit
    assert fake.calls == []

    fresh = FakeEncoder()
    from_disk = CachedEncoder(fresh, tmp_path).encode(["a", "b"])  # new process: disk hit
    assert fresh.calls == []
    assert torch.equal(from_disk, first[:2])

    CachedEncoder(fresh, tmp_path).encode(["a", "c"])  # only the missing prompt is encoded
    assert fresh.calls == [["c"]]


def test_cache_files_are_safetensors_keyed_by_encoder_and_prompt(tmp_path):
    fake = FakeEncoder()
    CachedEncoder(fake, tmp_path).encode(["a red cube", "a blue sphere"])
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert len(files) == 2  # and no temp files left behind
    for path in files:
        assert path.suffix == ".safetensors"
        with safe_open(path, framework="pt") as f:
            prompt = f.metadata()["prompt"]
            assert f.metadata()["encoder"] == fake.id
        expected_key = hashlib.sha256(f'["{fake.id}", "{prompt}"]'.encode()).hexdigest()
        assert path.stem == expected_key
        torch.testing.assert_close(load_file(path)["embedding"], fake.encode([prompt])[0])

    other = FakeEncoder(id="another-encoder")
    CachedEncoder(other, tmp_path).encode(["a red cube"])
    assert other.calls == [["a red cube"]]  # another encoder's entries are never reused


def test_corrupt_cache_file_is_recomputed(tmp_path):
    fake = FakeEncoder()
    cached = CachedEncoder(fake, tmp_path)
    expected = cached.encode(["a red cube"])
    cached.path_for("a red cube").write_bytes(b"\x80\x04 not safetensors")
    fake.calls.clear()
    assert torch.equal(CachedEncoder(fake, tmp_path).encode(["a red cube"]), expected)
    assert fake.calls == [["a red cube"]]
    assert torch.equal(load_file(cached.path_for("a red cube"))["embedding"], expected[0])


def test_memory_cache_is_bounded(tmp_path):
    cached = CachedEncoder(FakeEncoder(), tmp_path, memory_items=2)
    cached.encode(["a", "b", "c"])
    assert list(cached._memory) == ["b", "c"]


def test_disk_cache_is_bounded_and_keeps_the_recently_used(tmp_path):
    cached = CachedEncoder(FakeEncoder(), tmp_path, memory_items=0, disk_items=10)  # every hit reads disk
    prompts = [f"prompt {i}" for i in range(10)]
    cached.encode(prompts)
    for i, prompt in enumerate(prompts):  # written in this order, long ago
        os.utime(cached.path_for(prompt), (1000 + i, 1000 + i))
    cached.encode(["prompt 0"])  # a hit: used now
    cached.encode(["prompt 10"])  # the 11th file: the two least recently used go, down to 9
    kept = {p for p in [*prompts, "prompt 10"] if cached.path_for(p).is_file()}
    assert kept == {"prompt 0", *prompts[3:], "prompt 10"}
    assert len(list(tmp_path.rglob("*.safetensors"))) == 9
    # a removed prompt is computed again, exactly as before
    assert torch.equal(cached.encode(["prompt 1"]), FakeEncoder().encode(["prompt 1"]))


def test_disk_cache_counts_files_left_by_earlier_processes(tmp_path):
    CachedEncoder(FakeEncoder(), tmp_path).encode([f"old {i}" for i in range(5)])
    later = CachedEncoder(FakeEncoder(), tmp_path, disk_items=5)
    later.encode(["new"])  # 6 files on disk: pruned to 4
    assert len(list(tmp_path.rglob("*.safetensors"))) == 4
    assert later.path_for("new").is_file()
    with pytest.raises(ValueError, match="disk_items must be >= 1"):
        CachedEncoder(FakeEncoder(), tmp_path, disk_items=0)


def test_uncached_is_the_model_behind_a_cache(tmp_path):
    model = FakeEncoder()
    assert uncached(CachedEncoder(model, tmp_path)) is model
    assert uncached(model) is model
    uncached(CachedEncoder(model, tmp_path)).encode(["a red cube"])
    assert not list(tmp_path.rglob("*.safetensors"))


def test_cache_rejects_encoder_output_of_wrong_shape(tmp_path):
    class Broken(FakeEncoder):
        def encode(self, prompts):
            return torch.zeros(len(prompts), self.dim + 1)

    with pytest.raises(ValueError, match=r"returned shape \(1, 5\), expected \(1, 4\)"):
        CachedEncoder(Broken(), tmp_path).encode(["a"])


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------


def test_get_text_encoder_minilm_is_cached_and_matches(tmp_path, minilm_embeddings):
    encoder = get_text_encoder("minilm", cache_dir=str(tmp_path))
    assert isinstance(encoder, CachedEncoder)
    assert (encoder.id, encoder.dim) == ("all-MiniLM-L6-v2", 384)
    torch.testing.assert_close(encoder.encode(PROMPTS[:2]), minilm_embeddings[:2], atol=1e-5, rtol=0)
    assert len(list((tmp_path / "all-MiniLM-L6-v2").glob("*.safetensors"))) == 2
    # A fresh wrapper answers from disk without ever loading the model.
    again = get_text_encoder("minilm", cache_dir=str(tmp_path))
    again.encode(PROMPTS[:2])
    assert not again.encoder.loaded
    assert isinstance(get_text_encoder("minilm", cached=False), MiniLMEncoder)


def test_default_cache_dir_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("ATT3D_CACHE", str(tmp_path))
    assert get_text_encoder().cache_dir == tmp_path / "text"
    monkeypatch.delenv("ATT3D_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert get_text_encoder().cache_dir == tmp_path / "home" / ".cache" / "att3d" / "text"


def test_register_and_unknown_encoder(tmp_path, monkeypatch):
    monkeypatch.setattr(text, "_ENCODERS", dict(text._ENCODERS))
    register_text_encoder("fake", FakeEncoder)
    encoder = get_text_encoder("fake", cache_dir=tmp_path)
    assert encoder.id == "fake/encoder v1"
    assert not (tmp_path / "fake_encoder_v1").exists()  # nothing written before the first encode
    encoder.encode(["x"])
    assert (tmp_path / "fake_encoder_v1").is_dir()
    with pytest.raises(ValueError, match="already registered"):
        register_text_encoder("fake", FakeEncoder)
    # Other test modules may register their own fakes, so check the names this test knows about.
    with pytest.raises(ValueError, match=r"unknown text encoder 'clip' \(known: .*\bfake\b.*\bminilm\b"):
        get_text_encoder("clip")
