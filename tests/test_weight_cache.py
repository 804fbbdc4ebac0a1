"""LiteRT's XNNPACK weight cache (weight_cache.py): built once per artifact and CPU, published atomically, reused,
exact, and refused where the directory is not the user's own."""

import os

import numpy as np
import pytest

from conftest import needs_fmnist
from vmoe_export.backends import ArtifactRecord, RunOptions
from vmoe_export.backends.tflite import cache_key
from vmoe_export.runtime import BundleRuntime

pytestmark = needs_fmnist


@pytest.fixture(scope="module")
def bundle(shipped_bundle):
    return shipped_bundle("tflite")[0]


def _logits(bundle, cache_dir, images):
    rt = BundleRuntime(bundle, run=RunOptions(threads=1, weight_cache_dir=cache_dir), self_test=False)
    return np.stack([rt.predict(x).logits for x in images]), rt


def _images(rt, n=4):
    rng = np.random.default_rng(0)
    return [rng.standard_normal(rt.input_shape).astype(np.float32) for _ in range(n)]


def test_cache_is_built_once_reused_and_exact(bundle, tmp_path):
    cache = tmp_path / "wc"
    rt0 = BundleRuntime(bundle, run=RunOptions(threads=1, weight_cache_dir=None), self_test=False)
    images = _images(rt0)
    heap = np.stack([rt0.predict(x).logits for x in images])
    built, rt = _logits(bundle, cache, images)
    files = {p.name: p.stat().st_ino for p in cache.iterdir()}
    loaded = len(rt.schedule.shared_graphs) + sum(len(rt.schedule.expert_graphs(e)) for e in rt.experts.loaded)
    assert len(files) == loaded, "one cache file per loaded graph"
    assert not [n for n in files if n.endswith(".tmp")], "no temporary file is left once a build is published"
    records = [ArtifactRecord.from_manifest(rt.manifest, g) for g in rt.manifest["graphs"]]
    keys = {cache_key(r.sha256, r.shared_sha256) for r in records}
    assert all(n.split("-")[0] in keys for n in files)
    assert (cache.stat().st_mode & 0o777) == 0o700
    reused, _ = _logits(bundle, cache, images)
    assert {p.name: p.stat().st_ino for p in cache.iterdir()} == files, "reused, not built again"
    np.testing.assert_array_equal(built, heap)  # the same packed weights, mapped instead of on the heap
    np.testing.assert_array_equal(reused, heap)


def test_an_incomplete_cache_file_is_rebuilt_not_trusted(bundle, tmp_path):
    cache = tmp_path / "wc"
    images = _images(BundleRuntime(bundle, self_test=False))
    good, _ = _logits(bundle, cache, images)
    victim = sorted(cache.iterdir(), key=lambda p: p.stat().st_size)[-1]
    size = victim.stat().st_size
    victim.write_bytes(bytes(64))  # a build that died before XNNPACK wrote its header
    again, _ = _logits(bundle, cache, images)
    np.testing.assert_array_equal(again, good)
    assert victim.stat().st_size == size, "rebuilt whole"


@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="POSIX permissions")
def test_a_directory_others_can_write_is_refused_with_a_warning(bundle, tmp_path):
    cache = tmp_path / "shared"
    cache.mkdir()
    cache.chmod(0o777)
    with pytest.warns(RuntimeWarning, match="other users can write to it"):
        _, rt = _logits(bundle, cache, _images(BundleRuntime(bundle, self_test=False), 1))
    assert rt.predict(np.zeros(rt.input_shape, np.float32)).logits.shape[-1] > 0
    assert list(cache.iterdir()) == [], "nothing is written where others could swap it"


def test_budget_prunes_least_recently_used(bundle, tmp_path, monkeypatch):
    from vmoe_export.weight_cache import ENV_MAX_MB

    cache = tmp_path / "wc"
    monkeypatch.setenv(ENV_MAX_MB, "0")  # every older file goes; the one just built stays
    _logits(bundle, cache, _images(BundleRuntime(bundle, self_test=False), 1))
    assert len(list(cache.iterdir())) == 1


def test_the_environment_is_read_when_a_runtime_opens_not_at_import(bundle, tmp_path, monkeypatch):
    from vmoe_export.weight_cache import ENV_DIR

    monkeypatch.setenv(ENV_DIR, str(tmp_path / "late"))
    rt = BundleRuntime(bundle, self_test=False)
    rt.predict(np.zeros(rt.input_shape, np.float32))
    assert rt.run_options.weight_cache_dir == tmp_path / "late" and any((tmp_path / "late").iterdir())


def test_a_path_reading_shared_weights_is_cached_under_both_files():
    """The same path artifact over another shared-weights file packs other weights: another cache file. Without
    shared weights the key is the artifact's own hash, as before."""
    a, b = "a" * 64, "b" * 64
    assert cache_key(a) == a
    assert len({cache_key(a, b), cache_key(a, "c" * 64), cache_key(a)}) == 3
