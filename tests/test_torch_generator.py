"""The batched torch pair generator: labels, agreement with the CPU generator, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hdreg.apps.protocols import detone_protocol
from hdreg.data.decoding import load_images
from hdreg.data.sources import sample_source
from hdreg.data.synthetic.detone import DeToneProtocol, PhotometricJitter, SyntheticPairs
from hdreg.data.synthetic.detone_torch import TorchPairGenerator, batch_seed, jitter_luts
from hdreg.geometry import four_point_to_homography, inside_mask, warp_grid, warp_perspective
from hdreg.geometry_np import is_convex

from .conftest import textured_image

JITTER = detone_protocol(jitter=PhotometricJitter.from_spec(True))
N_PAIRS = 2000  # per generator, for the distribution tests


def ks_2samp(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov–Smirnov statistic and asymptotic p-value (ties allowed).

    ``p = Q_KS((√n_e + 0.12 + 0.11/√n_e)·D)`` with ``n_e = n·m/(n+m)`` (Stephens' approximation, as
    in Numerical Recipes); conservative for discrete data, which is what these tests need.
    """
    a, b = np.sort(np.ravel(a)), np.sort(np.ravel(b))
    both = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, both, side="right") / len(a)
    cdf_b = np.searchsorted(b, both, side="right") / len(b)
    d = float(np.abs(cdf_a - cdf_b).max())
    en = np.sqrt(len(a) * len(b) / (len(a) + len(b)))
    lam = (en + 0.12 + 0.11 / en) * d
    if lam < 0.2:  # the series below does not converge there; Q_KS(0.2) = 1 - 1e-12
        return d, 1.0
    k = np.arange(1, 101)
    p = 2.0 * np.sum((-1.0) ** (k - 1) * np.exp(-2.0 * (k * lam) ** 2))
    return d, float(np.clip(p, 0.0, 1.0))


def pvalue(a: np.ndarray, b: np.ndarray) -> float:
    return ks_2samp(a, b)[1]


@pytest.fixture(scope="module")
def sample_images() -> np.ndarray:
    return load_images(sample_source()).images


def cpu_stats(images: np.ndarray, protocol: DeToneProtocol, n: int, **kw) -> dict[str, np.ndarray]:
    ds = SyntheticPairs(images, protocol, seed=0, length=n, **kw)
    pairs = [ds.pair(i) for i in range(n)]
    return {
        "image_index": np.array([k for k, _ in pairs]),
        "offsets": np.stack([p["offsets"] for _, p in pairs]),
        "top_left": np.stack([p["top_left"] for _, p in pairs]),
        "mean_a": np.array([p["patch_a"].mean() for _, p in pairs]),
        "mean_b": np.array([p["patch_b"].mean() for _, p in pairs]),
    }


def torch_stats(gen: TorchPairGenerator, n: int, batch: int = 500) -> dict[str, np.ndarray]:
    out: dict[str, list[np.ndarray]] = {}
    for i in range(n // batch):
        draws = gen.draw(batch, i)
        pairs = gen.render(draws)
        for key, value in (
            ("image_index", draws.image_index),
            ("offsets", pairs["offsets"]),
            ("top_left", pairs["top_left"]),
            ("mean_a", pairs["patch_a"].float().mean(dim=(1, 2, 3))),
            ("mean_b", pairs["patch_b"].float().mean(dim=(1, 2, 3))),
        ):
            out.setdefault(key, []).append(value.cpu().numpy())
    return {key: np.concatenate(v) for key, v in out.items()}


@pytest.fixture(scope="module")
def cpu_reference(sample_images) -> dict[str, np.ndarray]:
    """CPU generator statistics with jitter and flips on (the geometry ignores both)."""
    return cpu_stats(sample_images, JITTER, N_PAIRS, flips=True)


@pytest.fixture(scope="module")
def torch_cpu(sample_images) -> dict[str, np.ndarray]:
    gen = TorchPairGenerator(torch.from_numpy(sample_images), JITTER, seed=0, flips=True)
    return torch_stats(gen, N_PAIRS)


def assert_same_distribution(ours: dict, ref: dict, n_images: int) -> None:
    for name, a, b in (
        ("offsets", ours["offsets"], ref["offsets"]),  # x and y pooled
        ("x0", ours["top_left"][:, 0], ref["top_left"][:, 0]),
        ("y0", ours["top_left"][:, 1], ref["top_left"][:, 1]),
        ("image index", ours["image_index"], ref["image_index"]),
        ("mean brightness of A", ours["mean_a"], ref["mean_a"]),
        ("mean brightness of B", ours["mean_b"], ref["mean_b"]),
    ):
        assert pvalue(a, b) > 1e-3, f"{name}: KS p = {pvalue(a, b):.2e}"
    assert set(np.unique(ours["image_index"])) == set(range(n_images))


class TestConstruction:
    def test_invalid_inputs(self):
        protocol = detone_protocol()
        with pytest.raises(TypeError, match=r"torch.Tensor.*torch.from_numpy"):
            TorchPairGenerator(np.zeros((2, 240, 320), np.uint8), protocol, seed=0)
        with pytest.raises(ValueError, match=r"non-empty .* uint8 tensor, got torch.float32"):
            TorchPairGenerator(torch.zeros(2, 240, 320), protocol, seed=0)
        with pytest.raises(ValueError, match="non-empty"):
            TorchPairGenerator(torch.zeros(0, 240, 320, dtype=torch.uint8), protocol, seed=0)
        with pytest.raises(ValueError, match="images are 100x80 but the protocol expects 320x240"):
            TorchPairGenerator(torch.zeros(2, 80, 100, dtype=torch.uint8), protocol, seed=0)
        with pytest.raises(ValueError, match="seed must be a non-negative integer"):
            TorchPairGenerator(torch.zeros(2, 240, 320, dtype=torch.uint8), protocol, seed=-1)
        gen = TorchPairGenerator(torch.zeros(2, 240, 320, dtype=torch.uint8), protocol, seed=0)
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            gen.generate(0, 0)
        with pytest.raises(ValueError, match="batch_index must be a non-negative integer"):
            gen.generate(4, -1)

    def test_keys_shapes_dtypes_match_the_cpu_items(self, sample_images):
        ds = SyntheticPairs(sample_images, JITTER, seed=0, length=1, with_full_image=True)
        item = ds[0]
        gen = TorchPairGenerator(
            torch.from_numpy(sample_images), JITTER, seed=0, flips=True, with_full_image=True
        )
        batch = gen.generate(3, 0)
        assert batch.keys() == item.keys()
        for key, value in batch.items():
            assert value.dtype == item[key].dtype, key
            assert value.shape == (3, *item[key].shape), key


class TestLabels:
    @pytest.mark.parametrize("flips", [False, True])
    def test_label_self_consistent(self, sample_images, flips):
        """Image A warped by the stored offsets reproduces patch B; patch A is A's window."""
        gen = TorchPairGenerator(
            torch.from_numpy(sample_images), detone_protocol(), seed=3, flips=flips,
            with_full_image=True,
        )  # fmt: skip
        batch = gen.generate(32, 0)
        corners, top_left = batch["corners"], batch["top_left"]
        H_a_from_b = four_point_to_homography(corners, corners + batch["offsets"])
        grid_a = warp_grid(H_a_from_b, (128, 128), top_left_b=top_left)
        assert bool((inside_mask(grid_a, (320, 240)) > 0).all())  # B lies inside A
        image_a = batch["image_a"].float()
        pred_b = warp_perspective(image_a, H_a_from_b, (128, 128), top_left_b=top_left)
        diff = (pred_b - batch["patch_b"].float()).abs()
        assert diff.mean() < 1.0 and diff.max() <= 2.0
        for b, (x0, y0) in enumerate(top_left.tolist()):
            window = batch["image_a"][b, :, y0 : y0 + 128, x0 : x0 + 128]
            assert torch.equal(window, batch["patch_a"][b])
        assert torch.equal(corners[:, 0], top_left.float())
        assert bool((corners[:, 2] - corners[:, 0] == 127).all())

    def test_flips_are_the_four_flips_of_the_source(self):
        image = torch.from_numpy(textured_image(seed=4))
        gen = TorchPairGenerator(
            image[None], detone_protocol(), seed=0, flips=True, with_full_image=True
        )
        draws = gen.draw(200, 0)
        image_a = gen.render(draws)["image_a"][:, 0]
        views = [image, image.flip(1), image.flip(0), image.flip(0, 1)]  # bit 0 = left-right
        for b, flip in enumerate(draws.flip.tolist()):
            assert torch.equal(image_a[b], views[flip])
        counts = np.bincount(draws.flip.numpy(), minlength=4)
        assert counts.min() > 25, counts

    def test_jittered_window_and_independent_tables(self, sample_images):
        gen = TorchPairGenerator(
            torch.from_numpy(sample_images), JITTER, seed=1, with_full_image=True
        )
        draws = gen.draw(16, 0)
        batch = gen.render(draws)
        plain = TorchPairGenerator(torch.from_numpy(sample_images), detone_protocol(), seed=1)
        assert torch.equal(plain.draw(16, 0).offsets, draws.offsets)  # jitter draws come last
        for b, (x0, y0) in enumerate(batch["top_left"].tolist()):
            window = batch["image_a"][b, :, y0 : y0 + 128, x0 : x0 + 128]
            assert torch.equal(window, batch["patch_a"][b])
        assert not torch.equal(draws.lut_a, draws.lut_b)

    def test_jitter_tables_equal_the_cpu_tables(self):
        """Given the same three draws, the torch tables are draw_lut's, entry for entry."""
        jitter = PhotometricJitter.from_spec(True)
        cpu, draws = [], []
        for i in range(500):
            cpu.append(jitter.draw_lut(np.random.default_rng(i)))
            rng = np.random.default_rng(i)  # draw_lut draws gamma, contrast, brightness
            draws.append([rng.uniform(-b, b) for b in (jitter.gamma, jitter.contrast, jitter.brightness)])  # fmt: skip
        d = torch.tensor(draws, dtype=torch.float64)
        assert np.array_equal(jitter_luts(d[:, 0], d[:, 1], d[:, 2]).numpy(), np.stack(cpu))


class TestDistributions:
    def test_ks_helper_agrees_with_scipy(self):
        stats = pytest.importorskip("scipy.stats")
        rng = np.random.default_rng(0)
        a, b = rng.normal(size=700), rng.normal(0.1, 1.0, size=500)
        d, p = ks_2samp(a, b)
        ref = stats.ks_2samp(a, b, method="asymp")
        assert d == pytest.approx(ref.statistic) and p == pytest.approx(ref.pvalue, rel=0.1)

    def test_matches_the_cpu_generator(self, sample_images, cpu_reference, torch_cpu):
        assert_same_distribution(torch_cpu, cpu_reference, len(sample_images))
        offsets, top_left = torch_cpu["offsets"], torch_cpu["top_left"]
        assert offsets.dtype == np.float32 and np.abs(offsets).max() <= 32
        # both ends of the integer ranges occur: x0 in [32, 160], y0 in [32, 80]
        assert (top_left[:, 0].min(), top_left[:, 0].max()) == (32, 160)
        assert (top_left[:, 1].min(), top_left[:, 1].max()) == (32, 80)

    def test_wrong_distributions_are_rejected(self, cpu_reference, torch_cpu):
        """The KS checks above can fail: they reject distorted copies of the same samples."""
        assert pvalue(2.0 * torch_cpu["offsets"], cpu_reference["offsets"]) < 1e-6  # U[-2ρ, 2ρ]
        assert pvalue(torch_cpu["top_left"][:, 1] + 4, cpu_reference["top_left"][:, 1]) < 1e-6
        assert pvalue(torch_cpu["image_index"] % 10, cpu_reference["image_index"]) < 1e-6

    def test_jitter_off_is_rejected(self, sample_images, cpu_reference):
        gen = TorchPairGenerator(torch.from_numpy(sample_images), detone_protocol(), seed=0)
        plain = torch_stats(gen, 1000)
        assert pvalue(plain["mean_a"], cpu_reference["mean_a"]) < 1e-6
        assert pvalue(plain["mean_b"], cpu_reference["mean_b"]) < 1e-6

    def test_non_convex_quads_redrawn_like_the_cpu(self):
        """With ρ near (P − 1)/2 about 6 % of raw draws fold; both generators redraw them."""
        protocol = detone_protocol(image_size=(48, 40), patch_size=16, rho=7.0)
        images = np.random.default_rng(0).integers(0, 256, (5, 40, 48), dtype=np.uint8)
        ref = cpu_stats(images, protocol, 3000)
        ours = torch_stats(TorchPairGenerator(torch.from_numpy(images), protocol, seed=0), 3000)
        corners = np.array([[0, 0], [15, 0], [15, 15], [0, 15]], np.float32)
        assert all(is_convex(corners + o) for o in ours["offsets"])
        raw = np.random.default_rng(1).uniform(-7, 7, (3000, 4, 2)).astype(np.float32)
        assert sum(not is_convex(corners + o) for o in raw) > 100  # the redraw is exercised
        assert_same_distribution(ours, ref, len(images))


class TestReproducibility:
    def test_per_seed_rank_and_batch(self, sample_images):
        images = torch.from_numpy(sample_images)
        gen = TorchPairGenerator(images, JITTER, seed=5, flips=True, with_full_image=True)
        first = gen.generate(8, 3, rank=1)
        gen.generate(8, 0)  # whatever came before
        again = TorchPairGenerator(images, JITTER, seed=5, flips=True, with_full_image=True)
        for key, value in again.generate(8, 3, rank=1).items():
            assert torch.equal(value, first[key]), key
        others = [gen.generate(8, 4, rank=1), gen.generate(8, 3, rank=0)]
        others.append(TorchPairGenerator(images, JITTER, seed=6).generate(8, 3, rank=1))
        for other in others:
            assert not torch.equal(other["offsets"], first["offsets"])

    def test_batch_seed(self):
        seeds = {batch_seed(s, r, i) for s in range(3) for r in range(3) for i in range(3)}
        assert len(seeds) == 27 and all(0 <= s < 2**64 for s in seeds)
        assert batch_seed(0, 0, 1) == batch_seed(0, 0, 1)
        with pytest.raises(ValueError, match="rank must be a non-negative integer"):
            batch_seed(0, 1.5, 0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
class TestCuda:
    def test_cuda_matches_cpu_statistics(self, sample_images, torch_cpu):
        images = torch.from_numpy(sample_images).to("cuda")
        gen = TorchPairGenerator(images, JITTER, seed=0, flips=True)
        batch = gen.generate(4, 0)
        assert all(v.device.type == "cuda" for v in batch.values())
        assert_same_distribution(torch_stats(gen, N_PAIRS), torch_cpu, len(sample_images))

    def test_cuda_labels_and_reproducibility(self, sample_images):
        images = torch.from_numpy(sample_images).to("cuda")
        gen = TorchPairGenerator(images, detone_protocol(), seed=3, with_full_image=True)
        batch = gen.generate(64, 0)
        for key, value in gen.generate(64, 0).items():
            assert torch.equal(value, batch[key]), key
        corners, top_left = batch["corners"], batch["top_left"]
        H_a_from_b = four_point_to_homography(corners, corners + batch["offsets"])
        pred_b = warp_perspective(
            batch["image_a"].float(), H_a_from_b, (128, 128), top_left_b=top_left
        )
        assert (pred_b - batch["patch_b"].float()).abs().mean() < 1.0
