"""data=unlabeled: real pairs of a folder without ground truth, and training a label-free model
on them through the real configs. Every folder is written from scikit-image's photos."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from hdreg.data.real.unlabeled import UnlabeledPairs, find_unlabeled_pairs, load_views
from hdreg.models.checkpoint import load_module

from .fixtures import TEXTURED, sample_photo, write_sequence
from .test_train_pipeline import run_train

# The iterative network shrunk to one 32×32 scale: the pipeline, not the accuracy, is under test.
TINY_ITERATIVE = [
    "experiment=iterative_unsupervised_cpu", "data=unlabeled",
    "model.net.input_size=32", "model.net.channels=[8,16]", "model.net.dim=16",
    "model.net.width=16", "model.net.iterations=2", "model.net.fine_input_size=0",
    "model.net.fine_iterations=0", "data.batch_size=4", "data.val_pairs=8",
    "data.test_pairs=8", "data.eval_batch_size=8", "data.num_workers=0",
    "data.split_fractions=[0.6,0.2,0.2]", "callbacks.progress_bar.refresh_rate=0",
    "evaluate_test=false", "trainer.max_steps=2", "data.steps_per_epoch=2",
    "trainer.log_every_n_steps=1",
]  # fmt: skip


def write_frames(folder: Path, n: int = 10) -> Path:
    """``n`` video frames ``frame1.png … frame<n>.png``: a photo panning right 3 px a frame, the
    photo changing every 5 frames (a cut)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, n + 1):
        photo = sample_photo(TEXTURED[(i - 1) // 5 % len(TEXTURED)], (360, 240))
        cv2.imwrite(str(folder / f"frame{i}.png"), photo[:, 3 * (i % 5) : 3 * (i % 5) + 320])
    return folder


class TestFindPairs:
    def test_frames_in_natural_order(self, tmp_path):
        write_frames(tmp_path / "video", 11)
        pairs = find_unlabeled_pairs(tmp_path)
        names = [(p.path_a.name, p.path_b.name) for p in pairs]
        assert names[:2] == [("frame1.png", "frame2.png"), ("frame2.png", "frame3.png")]
        assert ("frame9.png", "frame10.png") in names and len(pairs) == 10
        assert {p.sequence for p in pairs} == {"video"}

    def test_sequences_pair_the_reference_and_ignore_h_files(self, tmp_path):
        write_sequence(tmp_path / "v_a", "hpatches")
        write_sequence(tmp_path / "deep" / "graf", "oxford")
        (tmp_path / ".hidden").mkdir()
        cv2.imwrite(str(tmp_path / ".hidden" / "x1.png"), sample_photo())
        cv2.imwrite(str(tmp_path / ".hidden" / "x2.png"), sample_photo())
        pairs = find_unlabeled_pairs(tmp_path)
        got = [(p.sequence, p.path_a.name, p.path_b.name) for p in pairs]
        assert got == [
            ("deep/graf", "img1.ppm", "img2.ppm"), ("deep/graf", "img1.ppm", "img3.ppm"),
            ("deep/graf", "img1.ppm", "img4.ppm"), ("v_a", "1.ppm", "2.ppm"),
            ("v_a", "1.ppm", "3.ppm"), ("v_a", "1.ppm", "4.ppm"),
        ]  # fmt: skip

    def test_bad_folders(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="does not exist"):
            find_unlabeled_pairs(tmp_path / "nope")
        cv2.imwrite(str(tmp_path / "only.png"), sample_photo())
        with pytest.raises(ValueError, match="no image pairs under"):
            find_unlabeled_pairs(tmp_path)


class TestItems:
    def test_whole_views_resized_without_labels(self, tmp_path):
        write_sequence(tmp_path / "s", "hpatches")
        pairs = find_unlabeled_pairs(tmp_path)
        views, index, _, _ = load_views(pairs, 64)
        assert views.shape == (4, 64, 64) and index.tolist() == [[0, 1], [0, 2], [0, 3]]
        expected = cv2.resize(sample_photo(), (64, 64), interpolation=cv2.INTER_AREA)
        assert np.abs(views[0].astype(int) - expected).max() <= 2  # the photo, as a whole
        ds = UnlabeledPairs(views, index, seed=0, length=20, augment=True)
        item = ds[3]
        assert set(item) == {"patch_a", "patch_b", "image_a", "corners", "top_left"}
        assert item["patch_a"].shape == (1, 64, 64) and item["patch_a"].dtype == torch.uint8
        assert torch.equal(item["image_a"], item["patch_a"])
        assert item["corners"].tolist() == [[0, 0], [63, 0], [63, 63], [0, 63]]
        assert torch.equal(ds[3]["patch_b"], item["patch_b"])  # deterministic per item
        fixed = UnlabeledPairs(views, index, seed=0, length=3, draw=False, augment=False)
        assert torch.equal(fixed[2]["patch_b"][0], torch.from_numpy(views[3]))
        with pytest.raises(ValueError, match="exceeds"):
            UnlabeledPairs(views, index, seed=0, length=4, draw=False)


class TestTraining:
    def test_iterative_unsupervised_trains_on_frames_and_fine_tunes(self, tmp_path):
        frames = write_frames(tmp_path / "frames", 30)
        run = tmp_path / "run"
        run_train([*TINY_ITERATIVE, f"data.source={frames}"], run)
        last = run / "checkpoints" / "last.ckpt"
        ckpt = torch.load(last, map_location="cpu", weights_only=True)
        assert ckpt["global_step"] == 2
        events = EventAccumulator(str(run / "tensorboard"))
        events.Reload()
        tags = events.Tags()["scalars"]
        assert {"val/mace", "val/photometric", "train/loss"} <= set(tags)
        assert "train/mace" not in tags  # real pairs carry no label to monitor
        assert np.isfinite(events.Scalars("val/photometric")[-1].value)
        # fine-tune from that checkpoint: init= loads its network before the first step
        run2 = tmp_path / "run2"
        run_train([*TINY_ITERATIVE, f"data.source={frames}", f"init={last}"], run2)
        assert load_module(run2 / "checkpoints" / "last.ckpt").net is not None

    def test_adapting_to_the_folder_itself_holds_out_nothing(self, tmp_path, caplog, monkeypatch):
        import logging

        from hydra.utils import instantiate

        from hdreg.config import compose_config

        # an in-process Hydra run earlier in this worker may have reconfigured logging
        logger = logging.getLogger("hdreg.training.unlabeled_datamodule")
        monkeypatch.setattr(logger, "disabled", False)
        monkeypatch.setattr(logger, "propagate", True)
        caplog.set_level(logging.WARNING, logger=logger.name)

        frames = write_frames(tmp_path / "frames", 12)
        args = [*TINY_ITERATIVE, f"data.source={frames}", "data.split_fractions=[1,0,0]"]
        dm = instantiate(compose_config("train", args).data)
        dm.setup()
        assert dm.splits["val"] is dm.splits["train"] is dm.splits["test"]
        assert dm.pair_counts == {"train": 11, "val": 11}  # every consecutive pair, both uses
        assert "holds out no val images" in caplog.text
        with pytest.raises(ValueError, match="leaves no val images"):  # synthetic data: refused
            instantiate(compose_config("train", ["data.split_fractions=[1,0,1]"]).data).setup()

    def test_a_supervised_model_is_refused(self, tmp_path):
        frames = write_frames(tmp_path / "frames", 30)
        args = [*TINY_ITERATIVE, f"data.source={frames}", "model=iterative"]
        with pytest.raises(ValueError, match="pairs without labels"):
            run_train(args, tmp_path / "run")
