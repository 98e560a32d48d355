"""HMR regressor, losses, crops / flips and Lightning training (tiny backbone, 64-px crops)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

CROP = 64


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    from diffusion_hpc.config import GenerateConfig
    from diffusion_hpc.pipeline.generate import generate

    out = tmp_path_factory.mktemp("hmr") / "d"
    generate(GenerateConfig(n=8, image_size=(96, 96), batch_size=8), out=out, progress=False)
    return out


@pytest.fixture(scope="module")
def trained_run(tiny_dataset, tmp_path_factory, one_thread):
    """2 steps, export copied to ``initial``, then resumed to 20 steps; validated on the training
    set every 5 steps and at the end (steps 2, 5, 10, 15, 20). Before the resume, a stale row
    (step 7, as if validated after the checkpoint the resume starts from) is added to val.jsonl."""
    from diffusion_hpc.config import TrainConfig
    from diffusion_hpc.hmr.train import train
    from diffusion_hpc.hmr.validation import read_rows, write_rows

    run = tmp_path_factory.mktemp("hmr") / "run"
    config = TrainConfig(synthetic=[tiny_dataset], out=run, batch_size=8, backbone="tiny", crop_size=CROP, lr=1e-3,
                         augment=False, log_every=1, checkpoint_every=5, val=str(tiny_dataset), val_every=5,
                         accelerator="cpu", workers=0, max_steps=2)  # fmt: skip
    train(config, progress=False)
    initial = run.parent / "initial"
    initial.mkdir()
    for name in ("regressor.json", "regressor.safetensors"):
        shutil.copy(run / name, initial / name)
    rows = read_rows(run)
    write_rows(run, rows + [dict(rows[-1], step=7)])
    module = train(config.model_copy(update={"max_steps": 20, "resume": True}), progress=False)
    return run, initial, module


def _fixed_batch(dataset_dir):
    from diffusion_hpc.hmr.data import SyntheticShards

    ds = SyntheticShards([dataset_dir], size=CROP, augment=None, shuffle_buffer=1, repeat=False)
    return torch.utils.data.default_collate(list(ds))


def _eval_loss(regressor_dir, batch) -> float:
    from diffusion_hpc.hmr.model import load_regressor
    from diffusion_hpc.hmr.train import HMRModule

    module = HMRModule(backbone="tiny")
    module.regressor = load_regressor(regressor_dir)
    module.eval()
    with torch.no_grad():
        return float(module.compute_losses(batch)["total"])


def test_training_lowers_loss(trained_run, tiny_dataset):
    run, initial, _ = trained_run
    batch = _fixed_batch(tiny_dataset)
    before, after = _eval_loss(initial, batch), _eval_loss(run, batch)
    assert after < 0.8 * before, (before, after)


def test_resume_continues_step_count(trained_run):
    from diffusion_hpc.hmr.train import checkpoint_step

    run, _, module = trained_run
    assert module.trainer.global_step == 20
    assert checkpoint_step(run / "checkpoints" / "last.ckpt") == 20
    # one last.ckpt, however many writers (periodic, validations, the end) and resumes: no last-v1.ckpt
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt", "step=0000020.ckpt"]
    import csv

    rows = list(csv.DictReader((run / "logs" / "version_1" / "metrics.csv").open()))
    steps = [int(r["step"]) for r in rows if r.get("train/total")]
    assert steps[0] == 2 and steps[-1] == 19
    assert all(np.isfinite(float(r["train/total"])) for r in rows if r.get("train/total"))


def _val_log(run) -> list[dict]:
    """Validation rows of the run's metrics.csv files (all versions), as {column: float}."""
    import csv

    rows = []
    for path in sorted((run / "logs").glob("version_*/metrics.csv")):
        rows += [{k: float(v) for k, v in r.items() if v} for r in csv.DictReader(path.open()) if r.get("val/step")]
    return rows


def test_validation_history_one_row_per_step_across_resume(trained_run):
    from diffusion_hpc.hmr.validation import read_rows

    run, _, _ = trained_run
    rows = read_rows(run)
    assert [r["step"] for r in rows] == [2, 5, 10, 15, 20]  # the stale step-7 row is gone, nothing twice
    assert all(r["samples"] == 8 and r["kind"] == "dataset" and r["val_digest"] == rows[0]["val_digest"] for r in rows)
    logged = _val_log(run)  # the same numbers went through Lightning into metrics.csv
    assert [int(r["val/step"]) for r in logged] == [2, 5, 10, 15, 20]
    assert [int(r["step"]) for r in logged] == [1, 4, 9, 14, 19]  # Lightning's step: its 0-based batch index
    for got, row in zip(logged, rows):
        for key in ("mpjpe_mm", "pa_mpjpe_mm", "pck"):
            assert got[f"val/{key}"] == pytest.approx(row[key], rel=1e-6)  # float32 in the log


def test_validation_equals_evaluate_of_that_step(trained_run, tiny_dataset):
    from diffusion_hpc.config import EvaluateConfig
    from diffusion_hpc.hmr.evaluate import evaluate
    from diffusion_hpc.hmr.validation import read_rows

    run, initial, _ = trained_run
    rows = {r["step"]: r for r in read_rows(run)}
    for folder, step in ((initial, 2), (run, 20)):  # the regressors exported at steps 2 and 20
        result = evaluate(EvaluateConfig(checkpoint=folder, data=str(tiny_dataset), crop_size=CROP))
        assert result["samples"] == rows[step]["samples"] and result["protocol_3d"] == rows[step]["protocol_3d"]
        for key in ("mpjpe_mm", "pa_mpjpe_mm", "pck"):
            assert result[key] == pytest.approx(rows[step][key], rel=1e-9), (step, key)


def test_evaluate_on_a_device_and_precision_records_them(trained_run, tiny_dataset):
    from diffusion_hpc.config import EvaluateConfig
    from diffusion_hpc.hmr.evaluate import evaluate

    run, _, _ = trained_run
    full = evaluate(EvaluateConfig(checkpoint=run, data=str(tiny_dataset), crop_size=CROP, device="cpu"))
    half = evaluate(EvaluateConfig(checkpoint=run, data=str(tiny_dataset), crop_size=CROP, device="cpu",
                                   dtype="bfloat16"))  # fmt: skip
    assert (full["device"], full["dtype"], half["dtype"]) == ("cpu", "float32", "bfloat16")
    assert half["samples"] == full["samples"]
    assert half["mpjpe_mm"] == pytest.approx(full["mpjpe_mm"], rel=0.1)  # bfloat16: ~3 significant digits


def test_best_export_is_the_best_validation(trained_run, tiny_dataset):
    import json

    from diffusion_hpc.config import EvaluateConfig
    from diffusion_hpc.hmr.evaluate import evaluate
    from diffusion_hpc.hmr.validation import read_best, read_rows

    run, _, _ = trained_run
    best_row = min(read_rows(run), key=lambda r: r["pa_mpjpe_mm"])
    record = json.loads((run / "best" / "best.json").read_text())
    assert record == read_best(run)  # best.json = the record in the weights' header
    assert record["step"] == best_row["step"] and record["metric"] == "pa_mpjpe_mm" and record["mode"] == "min"
    assert record["value"] == best_row["pa_mpjpe_mm"]
    result = evaluate(EvaluateConfig(checkpoint=run / "best", data=str(tiny_dataset), crop_size=CROP))
    assert result["pa_mpjpe_mm"] == pytest.approx(best_row["pa_mpjpe_mm"], rel=1e-9)


def test_validation_errors_come_before_training(trained_run, tiny_dataset, tmp_path, capsys):
    from diffusion_hpc.cli import main
    from diffusion_hpc.config import TrainConfig
    from diffusion_hpc.errors import ConfigError
    from diffusion_hpc.hmr.train import checkpoint_step, train

    fresh = tmp_path / "r"
    base = ["train", "--synthetic", str(tiny_dataset), "--out", str(fresh), "--backbone", "tiny", "--crop-size", str(CROP)]
    (tmp_path / "empty").mkdir()
    cases = [
        (["--val", str(tmp_path / "no-such-set")], ["--val", "no-such-set", "does not exist", "skipose:PATH", "dataset folder"]),
        (["--val", str(tmp_path / "empty")], ["cannot tell the format of --val", "smart:PATH"]),
        (["--val", str(tiny_dataset), "--val-every", "0"], ["val_every", "greater than or equal to 1", "got 0"]),
        (["--val", str(tiny_dataset), "--val-limit", "0"], ["val_limit", "greater than or equal to 1", "got 0"]),
        (["--val-every", "5"], ["--val-every / --val-limit need --val SOURCE"]),
    ]
    for extra, messages in cases:
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert all(m in err for m in messages), err
        assert not fresh.exists()  # nothing written, nothing trained
    # resuming with other validation data than the history's is refused
    run, _, _ = trained_run
    with pytest.raises(ConfigError, match="recorded on other validation data.*--val-limit"):
        train(TrainConfig.from_yaml(run / "train.yaml", resume=True, max_steps=25, val_limit=3), progress=False)
    assert checkpoint_step(run / "checkpoints" / "last.ckpt") == 20


def test_resume_with_another_training_config_is_refused(trained_run, tiny_dataset):
    """RUN/train.yaml holds the config that started the run; a resume may change the budget, the
    hardware and the validation, not what is trained (here: the learning rate and the data)."""
    from diffusion_hpc.config import TrainConfig
    from diffusion_hpc.errors import ConfigError
    from diffusion_hpc.hmr.train import checkpoint_step, train

    run, _, _ = trained_run
    stored = TrainConfig.from_yaml(run / "train.yaml")
    assert stored.max_steps == 2 and stored.lr == 1e-3 and not stored.resume  # the first invocation's
    for change, named in (({"lr": 1e-2}, "lr: 0.001 -> 0.01"), ({"real": [f"smart:{tiny_dataset}"]}, "real: [] -> ")):
        with pytest.raises(ConfigError, match="--resume: the run in .* another training config") as err:
            train(stored.model_copy(update={"resume": True, "max_steps": 25, **change}), progress=False)
        assert named in str(err.value) and "train.yaml" in str(err.value)
    assert checkpoint_step(run / "checkpoints" / "last.ckpt") == 20  # nothing trained
    assert (run / "train.yaml").read_text() == stored.to_yaml()  # nor rewritten


def test_resume_from_the_stored_config(trained_run, tmp_path):
    """``dhpc train --config RUN/train.yaml --resume --max-steps N`` continues the run as it started."""
    from diffusion_hpc.cli import main
    from diffusion_hpc.hmr.train import checkpoint_step
    from diffusion_hpc.hmr.validation import read_rows

    run, _, _ = trained_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    assert main(["train", "--config", str(run / "train.yaml"), "--out", str(copy), "--resume", "--max-steps", "22"]) == 0
    assert checkpoint_step(copy / "checkpoints" / "last.ckpt") == 22
    assert [r["step"] for r in read_rows(copy)][-2:] == [20, 22]  # the history goes on (validated at the end)


@pytest.mark.parametrize("world", [2, 3])
def test_rank_shares_merge_to_the_single_process_score(tiny_dataset, monkeypatch, world):
    from diffusion_hpc.hmr.evaluate import load_targets, score
    from diffusion_hpc.hmr.validation import RankSlice, merge_shares

    targets = load_targets(str(tiny_dataset), crop_size=CROP, limit=7)
    rng = np.random.default_rng(0)
    pred = {"keypoints2d": targets.keypoints2d[..., :2] + rng.normal(scale=5.0, size=(7, 17, 2)),
            "joints3d": targets.joints3d + rng.normal(scale=0.05, size=(7, 17, 3))}  # fmt: skip
    shares = []
    for rank in range(world):  # what each rank predicts, in all_gather's order (rank-major)
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", str(world))
        index = np.array(list(RankSlice(7)))
        assert len(index) == len(RankSlice(7)) == -(-7 // world)
        shares.append({"index": index} | {k: v[index] for k, v in pred.items()})
    gathered = {k: np.concatenate([s[k] for s in shares]) for k in shares[0]}
    assert set(gathered["index"]) == set(range(7)) and len(gathered["index"]) > 7  # padded with repeats
    assert score(merge_shares(gathered, 7), targets) == score(pred, targets)
    with pytest.raises(RuntimeError, match="6 distinct samples, expected 7"):
        merge_shares({k: v[gathered["index"] != 6] for k, v in gathered.items()}, 7)


def test_finetune_checkpoint_is_strict(trained_run):
    from diffusion_hpc.errors import InputError
    from diffusion_hpc.hmr.model import HMRRegressor, load_state_strict
    from diffusion_hpc.hmr.train import load_weights

    run, _, _ = trained_run
    state = load_weights(run / "checkpoints" / "last.ckpt")
    load_state_strict(HMRRegressor("anny", backbone="tiny"), state)  # same architecture: fine
    with pytest.raises(InputError, match="shape mismatches"):
        load_state_strict(HMRRegressor("smpl", backbone="tiny"), state)


@pytest.mark.parametrize("rotation", [0.0, 20.0])
def test_flip_is_consistent_with_mirrored_params(tiny_dataset, rotation):
    from diffusion_hpc.body import get_body_model
    from diffusion_hpc.data import open_dataset
    from diffusion_hpc.data.schema import persons_of
    from diffusion_hpc.geometry.camera import project
    from diffusion_hpc.hmr.data import Augmentation, crop_sample, denormalise_keypoints

    body = get_body_model("anny")
    for sample in list(open_dataset(tiny_dataset))[:3]:
        (rec,) = persons_of(sample)
        args = (rec["image"], rec["keypoints2d"], rec["joints3d"], rec["params"], rec["K"])
        plain = crop_sample(*args, size=CROP, mask=rec["mask"], augment=Augmentation(rotation_deg=rotation))
        flip = crop_sample(*args, size=CROP, mask=rec["mask"], augment=Augmentation(rotation_deg=rotation, flip=True))
        assert torch.equal(flip["image"], plain["image"].flip(-1))
        params = {k: flip[k][None] for k in ("global_orient", "body_pose", "transl")} | {"phenotype": flip["shape"][None]}
        out = body(params)
        uv = project(out.joints["coco17"][0].numpy(), flip["K"].numpy())
        np.testing.assert_allclose(uv, denormalise_keypoints(flip["keypoints2d"][:, :2].numpy(), CROP), atol=0.3)
        np.testing.assert_allclose(out.joints["h36m17"][0].numpy(), flip["joints3d"][:, :3].numpy(), atol=3e-3)
        # the flipped keypoints are the mirrored, left/right-swapped unflipped ones
        from diffusion_hpc.body.joint_sets import flip_permutation

        mirrored = plain["keypoints2d"][flip_permutation("coco17")] * torch.tensor([-1.0, 1.0, 1.0])
        torch.testing.assert_close(flip["keypoints2d"], mirrored, atol=1e-5, rtol=0)


def test_output_shapes_anny_smpl_vit():
    from transformers import ViTConfig

    from diffusion_hpc.hmr.model import BODY_SPECS, HMRRegressor

    images = torch.rand(2, 3, CROP, CROP)
    anny = HMRRegressor("anny", backbone="tiny").eval()
    out = anny(images)
    assert out["pose6d"].shape == (2, 31, 6) and out["rotmat"].shape == (2, 31, 3, 3)
    assert out["global_orient"].shape == (2, 3) and out["body_pose"].shape == (2, 30, 3)
    assert out["phenotype"].shape == (2, 6) and bool(((out["phenotype"] > 0) & (out["phenotype"] < 1)).all())
    assert out["cam"].shape == (2, 3) and out["cam_t"].shape == (2, 3) and out["states"].shape[0] == 3
    # the IEF head starts near the mean: upright, facing the camera, neutral shape
    root = torch.tensor(BODY_SPECS["anny"].canonical_to_camera)
    assert torch.allclose(out["rotmat"][:, 0], root.expand(2, 3, 3), atol=0.05)
    assert torch.allclose(out["phenotype"], torch.full((2, 6), 0.5), atol=0.05)

    smpl = HMRRegressor("smpl", backbone="tiny", num_iterations=2)(images)
    assert smpl["body_pose"].shape == (2, 23, 3) and smpl["betas"].shape == (2, 10) and smpl["rotmat"].shape == (2, 24, 3, 3)

    tiny_vit = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=CROP, patch_size=16)
    vit = HMRRegressor("anny", backbone="vit", backbone_config=tiny_vit.to_dict())(images)
    assert vit["body_pose"].shape == (2, 30, 3)


def test_pretrained_dir(tmp_path):
    from transformers import ResNetModel

    from diffusion_hpc.errors import MissingModelError
    from diffusion_hpc.hmr.model import BACKBONE_CONFIGS, HMRRegressor

    missing = tmp_path / "no-such-backbone"
    with pytest.raises(MissingModelError, match="no-such-backbone"):
        HMRRegressor("anny", backbone="tiny", pretrained_path=missing)
    from transformers import ResNetConfig

    cfg = {k: v for k, v in BACKBONE_CONFIGS["tiny"].items() if k != "kind"}
    saved = ResNetModel(ResNetConfig(**cfg))
    saved.save_pretrained(tmp_path / "tiny")
    model = HMRRegressor("anny", backbone="tiny", pretrained_path=tmp_path / "tiny")
    for name, value in saved.state_dict().items():
        torch.testing.assert_close(model.backbone.state_dict()[name], value)


def test_losses_are_masked():
    from diffusion_hpc.hmr.losses import LossWeights, hmr_losses, rotmat_loss

    pred = torch.zeros(2, 4, 3, 3, requires_grad=True)
    gt = torch.stack([torch.zeros(4, 3, 3), torch.ones(4, 3, 3)])
    assert float(rotmat_loss(pred.detach(), gt, torch.tensor([1.0, 0.0]))) == 0.0
    assert float(rotmat_loss(pred.detach(), gt, torch.tensor([0.0, 1.0]))) == 1.0
    zero = rotmat_loss(pred, gt, torch.tensor([0.0, 0.0]))
    zero.backward()
    assert float(zero) == 0.0 and pred.grad is not None
    assert LossWeights().keypoints2d == 5.0 and LossWeights().rotmat == 1.0 and LossWeights().shape == 0.001
    terms = hmr_losses(
        {"keypoints2d": torch.zeros(2, 17, 2), "joints3d": torch.zeros(2, 17, 3), "rotmat": pred, "shape": torch.zeros(2, 6), "cam": torch.ones(2, 3)},
        {"keypoints2d": torch.ones(2, 17, 3), "joints3d": torch.zeros(2, 17, 4), "rotmat": gt, "shape": torch.zeros(2, 6),
         "has_2d": torch.ones(2), "has_3d": torch.zeros(2), "has_params": torch.tensor([0.0, 1.0])},
    )  # fmt: skip
    assert float(terms["keypoints2d"]) == 1.0 and float(terms["rotmat"]) == 1.0
    assert float(terms["total"]) == pytest.approx(5.0 + 1.0 + float(terms["camera"]))


def test_shards_split_across_consumers(tiny_dataset, monkeypatch):
    from diffusion_hpc.hmr.data import SyntheticShards, consumer_id

    ds = SyntheticShards([tiny_dataset], size=CROP, augment=None, repeat=False)
    keys = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        cid, count = consumer_id()
        keys.append({r["key"] for r in ds._records(np.random.default_rng(0), cid, count)})
    assert keys[0].isdisjoint(keys[1]) and len(keys[0] | keys[1]) == 8


def test_mixed_stream_masks(tiny_dataset):
    from diffusion_hpc.hmr.data import MixedStream, SyntheticShards

    class FakeReal(torch.utils.data.Dataset):
        def __init__(self, like):
            self.like = like

        def __len__(self):
            return 3

        def __getitem__(self, i):
            return self.like | {"has_params": torch.tensor(0.0), "has_3d": torch.tensor(0.0), "is_real": torch.tensor(1.0)}

    syn = SyntheticShards([tiny_dataset], size=CROP, augment=None)
    sample = next(iter(syn))
    stream = iter(MixedStream(syn, FakeReal(sample), real_ratio=0.5, seed=1))
    batch = torch.utils.data.default_collate([next(stream) for _ in range(40)])
    frac = float(batch["is_real"].mean())
    assert 0.2 < frac < 0.8
    assert torch.equal(batch["has_params"], 1.0 - batch["is_real"])


def test_real_dataset_from_benchmark_set(tiny_dataset, tmp_path):
    import cv2

    from diffusion_hpc.data import open_dataset
    from diffusion_hpc.data.benchmarks import BenchmarkSet, box_from_keypoints
    from diffusion_hpc.data.schema import persons_of
    from diffusion_hpc.hmr.data import RealDataset

    recs = [persons_of(s)[0] for s in list(open_dataset(tiny_dataset))[:2]]
    paths = []
    for i, rec in enumerate(recs):
        paths.append(tmp_path / f"{i}.png")
        cv2.imwrite(str(paths[-1]), rec["image"][..., ::-1])
    kp = np.stack([r["keypoints2d"] for r in recs])
    kp[..., 2] = kp[..., 2] > 0
    center, scale = box_from_keypoints(kp, "coco17")
    bench = BenchmarkSet(
        name="fake", image_paths=paths, center=center, scale=scale, keypoints2d=kp, joint_set="coco17",
        joints3d=np.stack([r["joints3d"]["h36m17"] for r in recs]), joints3d_set="h36m17",
    )  # fmt: skip
    ds = RealDataset(bench, size=CROP, augment=None)
    sample = ds[0]
    assert sample["image"].shape == (3, CROP, CROP) and float(sample["is_real"]) == 1.0
    assert float(sample["has_2d"]) == 1.0 and float(sample["has_3d"]) == 1.0 and float(sample["has_params"]) == 0.0
    assert bool((sample["keypoints2d"][:, :2].abs() <= 1.0).all())


def test_lightning_advert_is_dropped_and_its_other_lines_kept():
    import logging

    from pytorch_lightning.utilities.rank_zero import rank_zero_info

    from diffusion_hpc.hmr.train import _quiet_lightning_adverts

    seen: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    rank_zero = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    rank_zero.addHandler(handler)
    level = rank_zero.level
    rank_zero.setLevel(logging.INFO)
    try:
        _quiet_lightning_adverts()
        _quiet_lightning_adverts()  # idempotent: one filter
        rank_zero_info("💡 Tip: For seamless cloud logging, try installing [litlogger]")
        rank_zero_info("GPU available: False, used: False")
    finally:
        rank_zero.removeHandler(handler)
        rank_zero.setLevel(level)
    assert seen == ["GPU available: False, used: False"]
