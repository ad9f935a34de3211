"""The rotation × zoom proposals of `wide` (hdreg.models.similarity) and the whole-image
estimator's use of them: the geometry of the classes against the estimator's own hypotheses and
OpenCV, the soft labels, and a global stage that tries only the proposed classes."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from hdreg.estimators.coarse_to_fine import CoarseToFineEstimator, _centre_transform
from hdreg.geometry import offsets_to_homography, sample_at
from hdreg.models.checkpoint import load_net
from hdreg.models.similarity import (
    SimilarityCrossEntropy,
    SimilarityNet,
    centre_similarity,
    similarity_of,
)
from tests.test_coarse_to_fine import _corner_error, _render


@pytest.mark.parametrize("angle", [0.0, 45.0, 150.0, -120.0, 270.0])
@pytest.mark.parametrize("zoom", [0.25, 0.7, 1.0, 3.3])
def test_centre_similarity_is_the_estimators_hypothesis_and_reads_back(angle, zoom):
    G = centre_similarity(
        128, torch.tensor(angle, dtype=torch.float64), torch.tensor(zoom, dtype=torch.float64)
    )
    np.testing.assert_allclose(G.numpy(), _centre_transform(128, angle, zoom), atol=1e-9)
    read_angle, read_zoom = similarity_of(G[None], 128)
    assert (float(read_angle) - angle + 180) % 360 - 180 == pytest.approx(0, abs=1e-9)
    assert float(read_zoom) == pytest.approx(zoom, rel=1e-12)


def test_the_numpy_reading_is_the_torch_one():
    from hdreg.geometry_np import local_similarity

    H = np.array([[0.9, -0.4, 30.0], [0.35, 1.1, -12.0], [4e-4, -2e-4, 1.0]])
    angle, zoom = similarity_of(torch.from_numpy(H)[None], 128)
    assert local_similarity(H, (63.5, 63.5)) == pytest.approx(
        (float(zoom), float(angle)), rel=1e-12
    )


def test_similarity_is_read_at_the_centre_of_a_perspective_homography():
    """The Jacobian at B's centre, against finite differences of the projection."""
    H = torch.tensor(
        [[0.9, -0.4, 30.0], [0.35, 1.1, -12.0], [4e-4, -2e-4, 1.0]], dtype=torch.float64
    )
    c = 63.5

    def f(x: float, y: float) -> np.ndarray:
        q = H.numpy() @ np.array([x, y, 1.0])
        return q[:2] / q[2]

    e = 1e-4
    J = np.stack([(f(c + e, c) - f(c - e, c)) / (2 * e), (f(c, c + e) - f(c, c - e)) / (2 * e)], 1)
    angle, zoom = similarity_of(H[None], 128)
    assert float(zoom) == pytest.approx(math.sqrt(abs(np.linalg.det(J))), rel=1e-6)
    assert float(angle) == pytest.approx(
        math.degrees(math.atan2(J[1, 0] - J[0, 1], J[0, 0] + J[1, 1])), abs=1e-5
    )


class TestLabels:
    loss = SimilarityCrossEntropy(rotations=8, zoom_octaves=2, patch_size=128)
    net = SimilarityNet(rotations=8, zoom_octaves=2)

    def test_each_class_hypothesis_is_its_own_one_hot_label(self):
        classes = torch.arange(self.net.num_classes)
        target = self.loss.targets(self.net.offsets_of(classes))
        np.testing.assert_allclose(target.numpy(), np.eye(len(classes)), atol=1e-4)

    def test_between_classes_the_label_is_split(self):
        # 22.5 degrees, zoom sqrt(2): a quarter on each of the four neighbouring classes
        G = centre_similarity(128, torch.tensor([22.5]), torch.tensor([math.sqrt(2)]))
        corners = torch.tensor([[0.0, 0], [127, 0], [127, 127], [0, 127]], dtype=torch.float64)
        q = torch.cat([corners, torch.ones(4, 1, dtype=torch.float64)], 1) @ G[0].T
        offsets = (q[:, :2] / q[:, 2:] - corners)[None].float()
        t = self.loss.targets(offsets).view(8, 5)
        np.testing.assert_allclose(t[:2, 2:4].numpy(), 0.25, atol=1e-4)
        assert float(t.sum()) == pytest.approx(1.0, abs=1e-6)

    def test_zooms_beyond_the_grid_go_to_its_end_and_angles_wrap(self):
        G = centre_similarity(128, torch.tensor([350.0]), torch.tensor([8.0]))
        H, _ = offsets_to_homography(self.net.offsets_of(torch.tensor([0])).double(), 128)
        assert H.shape == (1, 3, 3)
        corners = torch.tensor([[0.0, 0], [127, 0], [127, 127], [0, 127]], dtype=torch.float64)
        q = torch.cat([corners, torch.ones(4, 1, dtype=torch.float64)], 1) @ G[0].T
        t = self.loss.targets((q[:, :2] / q[:, 2:] - corners)[None].float()).view(8, 5)
        # 350 degrees: between class 7 (315) and class 0 (0 = 360), mostly class 0
        assert float(t[0, 4]) == pytest.approx(35 / 45, abs=1e-4)
        assert float(t[7, 4]) == pytest.approx(10 / 45, abs=1e-4)

    def test_loss_is_low_for_the_right_logits_and_reports_accuracy(self):
        offsets = self.net.offsets_of(torch.tensor([3, 17]))
        right = torch.full((2, 40), -10.0)
        right[0, 3] = right[1, 17] = 10.0
        out = self.loss({"logits": right}, {"offsets": offsets})
        assert float(out["loss"]) < 1e-3 and float(out["top1"]) == 1.0
        wrong = self.loss({"logits": right.flip(0)}, {"offsets": offsets})
        assert float(wrong["loss"]) > 10 and float(wrong["top1"]) == 0.0


def test_the_turned_view_is_a_resampled_by_the_hypothesis():
    """A quarter turn: the network resamples A as A(G q), which for G a turn by 90 degrees is
    exactly torch.rot90, and OpenCV's warp with WARP_INVERSE_MAP (the estimator's resampling)."""
    net = SimilarityNet(rotations=4, zoom_octaves=0)
    a = torch.rand(1, 1, 128, 128, dtype=torch.float64)
    grid, valid = net._hypothesis_grids(a)
    turned = sample_at(a.repeat(4, 1, 1, 1), grid)
    G = net.hypothesis_matrices.double()
    for k in range(4):
        np.testing.assert_allclose(turned[k, 0], torch.rot90(a[0, 0], k), atol=1e-9)
        cv = cv2.warpPerspective(a[0, 0].numpy(), G[k].numpy(), (128, 128),
                                 flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)  # fmt: skip
        np.testing.assert_allclose(turned[k, 0, 1:-1, 1:-1], cv[1:-1, 1:-1], atol=1e-6)
    assert torch.all(valid >= 0.85)  # a quarter turn keeps every cell inside A (to rounding)
    zoomed = SimilarityNet(rotations=4, zoom_octaves=1)._hypothesis_grids(a)[1]
    # zoom 2 (A zoomed out): the middle half of each side of the turned A lies inside A
    assert float(zoomed[2].mean()) == pytest.approx(0.25, abs=0.02)


def test_forward_shapes_offsets_and_argument_checks():
    net = SimilarityNet()
    out = net(torch.rand(2, 1, 128, 128), torch.rand(2, 1, 128, 128))
    assert out["logits"].shape == (2, 40) and out["offsets"].shape == (2, 4, 2)
    best = out["logits"].argmax(1)
    np.testing.assert_allclose(out["offsets"], net.offsets_of(best))
    assert not any(p.requires_grad for p in net.encoder.parameters())  # train_encoder=False
    with pytest.raises(ValueError, match="rotations"):
        SimilarityNet(rotations=0)
    with pytest.raises(ValueError, match="divisible"):
        SimilarityNet(input_size=66)


class _Fixed(nn.Module):
    """A proposal network that ranks the classes in a given order (to test the estimator's use
    of the ranking, not a network's quality)."""

    def __init__(self, order: list[int], like: SimilarityNet) -> None:
        super().__init__()
        self.like, self.order = like, order

    def hypotheses(self) -> list[tuple[float, float]]:
        return self.like.hypotheses()

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = torch.zeros(1, self.like.num_classes)
        logits[0, self.order] = torch.linspace(1.0, 0.0, len(self.order))
        return {"logits": logits}


@pytest.fixture(scope="module")
def nets():
    return load_net("wide"), load_net("iterative")


def _class_of(angle_b_from_a: float, zoom_b_from_a: float, like: SimilarityNet) -> int:
    """The class nearest to the hypothesis of ``H_a_from_b`` (the inverse motion)."""
    r = round((-angle_b_from_a % 360) / (360 / like.rotations)) % like.rotations
    z = int(np.clip(round(-math.log2(zoom_b_from_a)), -like.zoom_octaves, like.zoom_octaves))
    return r * len(like.zooms) + z + like.zoom_octaves


@pytest.mark.slow
def test_the_global_stage_tries_only_the_proposed_classes(nets):
    like = SimilarityNet()
    a, b, b_from_a = _render(100.0, 1.0)
    right = _class_of(100.0, 1.0, like)
    wrong_first = [c for c in range(like.num_classes) if c != right] + [right]
    settings = dict(levels=(256, 512), grid=4, ransac_threshold=1.5, proposals=1)
    good = CoarseToFineEstimator(*nets, proposal_net=_Fixed([right], like), **settings)
    result = good.estimate_pair(a, b)
    assert result.H_a_from_b is not None and _corner_error(result.H_a_from_b, b_from_a) < 1.0
    tried = np.isfinite(result.details["proposal_scores"])
    assert tried.sum() == 1 and tried[right]
    bad = CoarseToFineEstimator(*nets, proposal_net=_Fixed(wrong_first, like), **settings)
    assert bad.estimate_pair(a, b).H_a_from_b is None  # one wrong class tried: fails, says so
    rescued = CoarseToFineEstimator(
        *nets, proposal_net=_Fixed(wrong_first, like), fallback_confidence=0.5, **settings
    ).estimate_pair(a, b)
    # the failing proposal is dropped and the rotation hypotheses (default: 4) are all tried
    assert rescued.details["global_fallback"]
    assert np.isfinite(rescued.details["hypothesis_scores"]).sum() == 4
    assert _corner_error(rescued.H_a_from_b, b_from_a) < 1.0


@pytest.mark.slow
def test_a_zoomed_out_b_is_refined_in_as_frame(nets):
    like = SimilarityNet()
    a, b, b_from_a = _render(-30.0, 0.4)
    right = _class_of(-30.0, 0.4, like)
    est = CoarseToFineEstimator(*nets, proposal_net=_Fixed([right], like), proposals=1,
                                levels=(256, 512), grid=5, ransac_threshold=1.5, swap_zoom=1.5)  # fmt: skip
    result = est.estimate_pair(a, b)
    assert result.details["refined_swapped"]
    assert result.H_a_from_b is not None and _corner_error(result.H_a_from_b, b_from_a) < 1.0


def test_estimator_argument_checks(nets):
    like = SimilarityNet()
    with pytest.raises(ValueError, match="proposals must be >= 1"):
        CoarseToFineEstimator(*nets, proposal_net=like, proposals=0)
    with pytest.raises(ValueError, match="swap_zoom"):
        CoarseToFineEstimator(*nets, swap_zoom=0.5)
    with pytest.raises(ValueError, match="global_stage='hypotheses'"):
        CoarseToFineEstimator(*nets, proposal_net=like, global_stage="dense")
    est = CoarseToFineEstimator(*nets, proposal_net=like)
    assert est.classes == like.hypotheses()


def test_init_part_loads_one_module_of_a_trained_network():
    """``init=wide init_part=coarse.encoder:encoder``: the new network's encoder becomes the
    trained one's, the rest keeps its own initialisation; a part that does not exist or does
    not fit is one ValueError naming it."""
    from types import SimpleNamespace

    from hdreg.training.job import init_weights

    module = SimpleNamespace(net=SimilarityNet())
    head_before = module.net.head[0].weight.clone()
    init_weights(module, "wide", "coarse.encoder:encoder")
    wide = load_net("wide").coarse.encoder.state_dict()
    for key, value in module.net.encoder.state_dict().items():
        torch.testing.assert_close(value, wide[key])
    torch.testing.assert_close(module.net.head[0].weight, head_before)
    with pytest.raises(ValueError, match=r"init_part=coarse\.encoder: expected SRC:DST"):
        init_weights(module, "wide", "coarse.encoder")
    with pytest.raises(ValueError, match=r"init_part=coarse\.nothing:encoder"):
        init_weights(module, "wide", "coarse.nothing:encoder")
    with pytest.raises(ValueError, match=r"does not fit model\.net\.encoder"):
        init_weights(module, "wide", "fine.encoder:encoder")
