"""Feature extractors and streaming statistics for Fréchet distances."""

import importlib
import importlib.util
import math
import sys
import types

import pytest
import torch

from scorekit.metrics import FeatureExtractor, FeatureStats, frechet_distance


def test_streaming_stats_equal_batch_moments():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 7, generator=gen, dtype=torch.float64) * 3 + 5
    stats = FeatureStats()
    for chunk in torch.split(x, [1, 2, 97, 300, 600]):
        stats.update(chunk)
    assert stats.n == 1000
    torch.testing.assert_close(stats.mean, x.mean(0), rtol=0, atol=1e-10)
    torch.testing.assert_close(stats.cov, torch.cov(x.T), rtol=0, atol=1e-10)
    chunked = FeatureStats.from_features(x, chunk=64)
    torch.testing.assert_close(chunked.cov, torch.cov(x.T), rtol=0, atol=1e-10)


def test_stats_reject_mismatched_dims():
    stats = FeatureStats().update(torch.randn(4, 3))
    with pytest.raises(ValueError, match="feature dim"):
        stats.update(torch.randn(4, 2))


def test_frechet_of_identical_stats_is_zero():
    x = torch.randn(500, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    s = FeatureStats.from_features(x)
    assert abs(frechet_distance(s, s)) < 1e-10
    assert abs(frechet_distance(s, x) - 0.0) < 1e-10


def test_frechet_of_known_gaussians_matches_closed_form():
    # N(m1, a^2 I) vs N(m2, b^2 I) in d dims: |m1 - m2|^2 + d (a - b)^2
    d, a, b = 4, 1.5, 0.5
    m1, m2 = torch.zeros(d, dtype=torch.float64), torch.full((d,), 2.0, dtype=torch.float64)
    s1 = FeatureStats.from_moments(m1, a**2 * torch.eye(d, dtype=torch.float64), 100)
    s2 = FeatureStats.from_moments(m2, b**2 * torch.eye(d, dtype=torch.float64), 100)
    assert abs(frechet_distance(s1, s2) - (4 * d + d * (a - b) ** 2)) < 1e-10
    # a non-commuting pair: diag(1, 4) vs a 45-degree rotation of it (same spectrum)
    c1 = torch.diag(torch.tensor([1.0, 4.0], dtype=torch.float64))
    r = torch.tensor([[1.0, -1.0], [1.0, 1.0]], dtype=torch.float64) / math.sqrt(2)
    c2 = r @ c1 @ r.T
    z = torch.zeros(2, dtype=torch.float64)
    # tr(C1 + C2 - 2 (C1^1/2 C2 C1^1/2)^1/2); C1^1/2 C2 C1^1/2 = [[2.5, 3], [3, 10]]
    m = torch.tensor([[2.5, 3.0], [3.0, 10.0]], dtype=torch.float64)
    expected = 10 - 2 * float(torch.linalg.eigvalsh(m).sqrt().sum())
    got = frechet_distance(FeatureStats.from_moments(z, c1, 10),
                           FeatureStats.from_moments(z, c2, 10))
    assert abs(got - expected) < 1e-10


def test_raw_features_flatten():
    x = torch.rand(3, 1, 4, 4) * 2 - 1
    fe = FeatureExtractor("raw")
    assert torch.equal(fe(x), x.flatten(1))
    assert fe.stats(x, batch_size=2).n == 3


def test_unknown_kind_and_missing_inception_weights(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="nope"):
        FeatureExtractor("nope")
    monkeypatch.delenv("SCOREKIT_INCEPTION", raising=False)
    with pytest.raises(FileNotFoundError, match="SCOREKIT_INCEPTION"):
        FeatureExtractor("inception")
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        FeatureExtractor("inception", weights=tmp_path / "absent.pth")


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    path = tmp_path_factory.mktemp("cache") / "digits-cnn.safetensors"
    return FeatureExtractor("classifier", weights=path), path


@pytest.mark.slow
def test_classifier_accuracy_and_cache(classifier):
    fe, path = classifier
    assert fe.info["test_accuracy"] >= 0.95  # held-out split of 360 digits
    assert path.exists() and not list(path.parent.glob("*.tmp"))
    again = FeatureExtractor("classifier", weights=path)  # loads, does not retrain
    assert again.info["sha256"] == fe.info["sha256"]
    from scorekit.data import digits

    x = digits()[:50]
    feats = fe(x)
    assert feats.shape == (50, 64) and torch.equal(feats, again(x))
    # nearest-upsampled digits box-average back to the same 8x8 input
    up = digits(size=16)[:50]
    torch.testing.assert_close(fe(up), feats)


@pytest.mark.slow
def test_classifier_fd_separates_noise_from_digits(classifier):
    from scorekit.data import digits

    fe, _ = classifier
    x = digits()
    real_a, real_b = fe.stats(x[:800]), fe.stats(x[800:1600])
    noise = fe.stats(torch.rand(800, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    assert frechet_distance(real_a, noise) > 10 * frechet_distance(real_a, real_b)


def _reference_inception():
    """torch-fidelity's InceptionV3 module, imported without the package __init__ (which
    needs torchvision)."""
    spec = importlib.util.find_spec("torch_fidelity")
    if spec is None:
        pytest.skip("torch-fidelity is not installed (reference for the structure test)")
    saved = sys.modules.get("torch_fidelity")
    pkg = types.ModuleType("torch_fidelity")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules["torch_fidelity"] = pkg
    try:
        return importlib.import_module("torch_fidelity.feature_extractor_inceptionv3")
    except ImportError as err:
        pytest.skip(f"torch-fidelity's InceptionV3 module does not import: {err}")
    finally:
        if saved is not None:
            sys.modules["torch_fidelity"] = saved


@pytest.mark.slow
def test_inception_structure_matches_torch_fidelity(tmp_path):
    ref_mod = _reference_inception()
    from scorekit.evaluation.features.inception import FIDInceptionV3

    gen = torch.Generator().manual_seed(0)
    state = FIDInceptionV3().state_dict()
    for key, v in state.items():  # random weights that keep activations O(1)
        if key.endswith("conv.weight"):
            v.copy_(torch.randn(v.shape, generator=gen) * math.sqrt(2 / v[0].numel()))
        elif key.endswith(("bn.bias", "running_mean")):
            v.copy_(0.1 * torch.randn(v.shape, generator=gen))
        elif key.endswith("running_var"):
            v.copy_(1 + 0.1 * torch.rand(v.shape, generator=gen))
        elif key.startswith("fc."):
            v.copy_(0.01 * torch.randn(v.shape, generator=gen))
    path = tmp_path / "weights.pth"
    torch.save(state, path)
    ref = ref_mod.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                              feature_extractor_weights_path=str(path))
    ours = FeatureExtractor("inception", weights=path)
    u = torch.randint(0, 256, (3, 3, 21, 27), generator=gen, dtype=torch.uint8)
    with torch.no_grad():
        expected = ref(u)[0].double()
    got = ours(u.float() / 127.5 - 1).double()
    assert got.shape == (3, 2048)
    assert (got - expected).abs().max() < 1e-3 * expected.abs().max()
    # FID on the first 256 features: the full 2048-d one costs two 2048^2 eigendecompositions
    # (~10 s on one core) and adds nothing once every feature agrees.
    fd_ref = frechet_distance(expected[:2, :256], expected[1:, :256])
    assert abs(frechet_distance(got[:2, :256], got[1:, :256]) - fd_ref) < 1e-3 * max(1.0, fd_ref)
    gray = torch.randint(0, 256, (2, 1, 8, 8), generator=gen, dtype=torch.uint8)
    with torch.no_grad():
        expected_gray = ref(gray.expand(-1, 3, -1, -1).contiguous())[0].double()
    got_gray = ours(gray.float() / 127.5 - 1).double()
    assert (got_gray - expected_gray).abs().max() < 1e-3 * expected_gray.abs().max()
