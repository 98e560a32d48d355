"""Every consumer of a dataset reads its persons (schema v2; a v1 sample is one person): training on
person crops, the quality report's per-person figures, dhpc inspect's people count, the preview's
per-person colours, body-model conversion of every person."""

from __future__ import annotations

import io
import json
import shutil
import tarfile

import numpy as np
import pytest
import torch
from conftest import run_cli

from diffusion_hpc.errors import InputError

CROP = 48
PERSON_FIELDS = ("body_model", "params", "joints3d", "keypoints2d", "mask", "labels")


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """(one-person dataset as written today, the same dataset in the schema-1 layout, its decoded
    samples): four render-baseline samples, 64 px."""
    from diffusion_hpc.config import GenerateConfig
    from diffusion_hpc.data import open_dataset
    from diffusion_hpc.pipeline.generate import generate

    root = tmp_path_factory.mktemp("persons")
    generate(GenerateConfig(n=4, image_size=(64, 64), batch_size=4), out=root / "d", progress=False)
    shutil.copytree(root / "d", root / "v1")
    for shard in (root / "v1" / "shards").glob("shard-*.tar"):
        write_v1_shard(shard, shard)
    return root / "d", root / "v1", list(open_dataset(root / "d"))


def v1_members(members: dict[str, bytes]) -> dict[str, bytes]:
    """A one-person sample's members in the schema-1 layout (before persons): the person's fields at
    the top of the JSON, unbatched params.npz and labels, no instance.png."""
    from diffusion_hpc.data.schema import LABEL_MODELS, decode_labels, encode_label, label_member

    meta = json.loads(members["json"])
    (person,) = meta.pop("persons")
    meta.update(schema=1, body_model=person["body_model"], joints3d=person["joints3d"],
                keypoints2d=person["keypoints2d"], pose_source=person["pose_source"])
    with np.load(io.BytesIO(members["params.npz"]), allow_pickle=False) as npz:
        params = io.BytesIO()
        np.savez(params, **{k: npz[k][0] for k in npz.files})
    out = {ext: data for ext, data in members.items() if ext != "instance.png"}
    out.update({"json": json.dumps(meta, sort_keys=True).encode(), "params.npz": params.getvalue()})
    for model in LABEL_MODELS:
        if label_member(model) in members:
            out[label_member(model)] = encode_label(decode_labels(model, members[label_member(model)])[0])
    return out


def write_v1_shard(source, target) -> None:
    from diffusion_hpc.data.reader import iter_shard_members

    samples = list(iter_shard_members(source))
    with tarfile.open(target, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in samples:
            for ext, data in v1_members(members).items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def as_v1(sample: dict) -> dict:
    """A decoded one-person sample as the reader returns a schema-1 one (no ``persons``)."""
    (person,) = sample["persons"]
    fields = {k: person[k] for k in ("body_model", "params", "joints3d", "keypoints2d", "pose_source", "labels")}
    return {**{k: v for k, v in sample.items() if k not in ("persons", "instance")}, **fields, "schema": 1}


def scene_of(samples: list[dict], scores: list[dict] | None = None) -> dict:
    """A decoded schema-v2 sample (the reader's contract) holding the persons of ``samples`` on the
    first one's image: person p has sample p's body, joints, keypoints and labels; its mask is the
    part of sample p's silhouette no earlier person covers (``instance``), ``visible_fraction`` that
    part's share."""
    samples = [as_v1(s) if "persons" in s else s for s in samples]
    base = samples[0]
    instance = np.full(base["mask"].shape, -1, np.int16)
    persons = []
    for p, s in enumerate(samples):
        own = s["mask"] & (instance < 0)
        instance[own] = p
        persons.append({**{k: s[k] for k in PERSON_FIELDS}, "mask": own, "pose_source": f"p{p}",
                        "scores": (scores or [{}] * len(samples))[p],
                        "visible_fraction": float(own.sum() / max(s["mask"].sum(), 1))})
    image = {k: v for k, v in base.items() if k not in PERSON_FIELDS}
    return {**image, "schema": 2, "mask": instance >= 0, "instance": instance, "persons": persons}


# ---------------------------------------------------------------- training on person crops


@pytest.mark.parametrize("layout", ["v2", "v1"])
def test_training_reads_one_crop_per_person_of_a_one_person_dataset(datasets, layout):
    from diffusion_hpc.data import open_dataset
    from diffusion_hpc.hmr.data import SyntheticShards, count_persons

    path = datasets[0] if layout == "v2" else datasets[1]
    samples = list(open_dataset(path))
    assert all(("persons" in s) == (layout == "v2") for s in samples)
    ds = SyntheticShards([path], size=CROP, augment=None, shuffle_buffer=1, repeat=False)
    items = list(ds)
    assert len(items) == len(samples) == ds.counts.used == 4 and ds.counts.skipped == 0
    counted = count_persons([path])
    assert (counted.images, counted.persons, counted.used, counted.per_image) == (4, 4, 4, {1: 4})
    for item, sample in zip(items, samples):  # the crop's labels are the sample's one person's
        person = sample["persons"][0] if layout == "v2" else sample
        np.testing.assert_allclose(item["global_orient"].numpy(), person["params"]["global_orient"], atol=1e-6)
        np.testing.assert_allclose(item["joints3d"].numpy()[:, :3], person["joints3d"]["h36m17"], atol=1e-6)
    # a person is skipped when fewer keypoints than asked for are visible
    strict = SyntheticShards([path], size=CROP, augment=None, repeat=False, min_visible_keypoints=18)
    with pytest.raises(InputError, match="none of the 4 persons .*min_visible_keypoints 18"):
        list(strict)
    assert count_persons([path], min_keypoints=18).skipped == 4


def test_training_crops_each_person_of_a_multi_person_sample(datasets, monkeypatch):
    """A 3-person sample gives one item per visible person: the crop around that person (every
    keypoint of it in the image lands inside the crop where the crop matrix puts it) with that
    person's parameters and joints; a person with too few visible keypoints is skipped and counted."""
    from diffusion_hpc.hmr.data import SyntheticShards, denormalise_keypoints, visible_keypoints

    path, _, samples = datasets
    scene = scene_of(samples[:3])
    hidden = scene["persons"][2]
    hidden["keypoints2d"] = hidden["keypoints2d"].copy()
    hidden["keypoints2d"][3:, 2] = np.minimum(hidden["keypoints2d"][3:, 2], 1)  # only 3 joints visible
    assert visible_keypoints(hidden) < 6
    ds = SyntheticShards([path], size=CROP, augment=None, shuffle_buffer=1, repeat=False)
    monkeypatch.setattr(ds, "_records", lambda rng, cid, count: iter([scene]))
    items = list(ds)
    assert len(items) == 2 and (ds.counts.used, ds.counts.skipped, ds.counts.images) == (2, 1, 1)
    assert ds.counts.per_image == {3: 1}
    for item, person in zip(items, scene["persons"][:2]):
        kp = np.asarray(person["keypoints2d"], np.float64)
        A = item["crop_matrix"].numpy().astype(np.float64)
        expected = (np.c_[kp[:, :2], np.ones(17)] @ A.T)[:, :2]
        got = denormalise_keypoints(item["keypoints2d"].numpy()[:, :2], CROP)
        seen = kp[:, 2] > 0
        np.testing.assert_allclose(got[seen], expected[seen], atol=1e-3)
        assert np.all((got[seen] >= -0.5) & (got[seen] <= CROP - 0.5))  # the whole person is in its crop
        np.testing.assert_allclose(item["global_orient"].numpy(), person["params"]["global_orient"], atol=1e-6)
        np.testing.assert_allclose(item["joints3d"].numpy()[:, :3], person["joints3d"]["h36m17"], atol=1e-6)
    # the two crops differ: each follows its own person
    assert not torch.allclose(items[0]["crop_matrix"], items[1]["crop_matrix"])


def test_training_skips_persons_mostly_hidden_by_another(datasets, monkeypatch):
    from diffusion_hpc.hmr.data import MIN_VISIBLE_FRACTION, SyntheticShards, trainable

    path, _, samples = datasets
    scene = scene_of(samples[:2])
    scene["persons"][1]["visible_fraction"] = MIN_VISIBLE_FRACTION / 2
    assert trainable(scene["persons"][0]) and not trainable(scene["persons"][1])
    ds = SyntheticShards([path], size=CROP, augment=None, shuffle_buffer=1, repeat=False)
    monkeypatch.setattr(ds, "_records", lambda rng, cid, count: iter([scene]))
    assert len(list(ds)) == 1 and ds.counts.skipped == 1


# ---------------------------------------------------------------- dhpc inspect and the preview


def write_meta_shard(path, metas: list[dict]) -> None:
    """A shard holding only each sample's JSON member (what the people census reads)."""
    with tarfile.open(path, "w") as tar:
        for meta in metas:
            data = json.dumps(meta).encode()
            info = tarfile.TarInfo(f"{meta['key']}.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_inspect_counts_people_per_image(datasets, tmp_path):
    from diffusion_hpc.data.inspect import people_census, people_lines, summarize

    for path in datasets[:2]:  # v2 and v1 layouts
        dataset_census = people_census(sorted((path / "shards").glob("shard-*.tar")))
        assert dataset_census == {"images": 4, "persons": 4, "per_image": {1: 4}, "occluded": 0}
        assert "people    4 persons in 4 images; 0 occluded" in summarize(path)

    kp = np.zeros((17, 3)).tolist()
    person = lambda f: {"body_model": "anny", "joints3d": {}, "keypoints2d": kp, "scores": {},  # noqa: E731
                        "pose_source": "", "visible_fraction": f}
    metas = [{"schema": 2, "key": "a", "persons": [person(1.0), person(0.4), person(1.0)]},
             {"schema": 2, "key": "b", "persons": [person(1.0), person(0.9)]},
             {"schema": 2, "key": "c", "persons": [person(1.0)]},
             {"schema": 1, "key": "d", "keypoints2d": kp}]  # a v1 sample: one unoccluded person
    write_meta_shard(tmp_path / "shard-000000.tar", metas)
    census = people_census([tmp_path / "shard-000000.tar"])
    assert census == {"images": 4, "persons": 7, "per_image": {1: 2, 2: 1, 3: 1}, "occluded": 2}
    lines = people_lines(census)
    assert lines[0].startswith("people    7 persons in 4 images; 2 occluded") and "28.6%" in lines[0]
    assert lines[2].split("|")[0].strip() == "1" and lines[2].endswith(" 2") and lines[4].endswith(" 1")
    # a member named off its folder, or a broken tar, is one error naming it
    write_meta_shard(tmp_path / "bad.tar", [{"schema": 2, "key": "../up", "persons": []}])
    with pytest.raises(InputError, match=r"bad\.tar.*not a plain file name"):
        people_census([tmp_path / "bad.tar"])
    (tmp_path / "junk.tar").write_bytes(b"not a tar" * 100)
    with pytest.raises(InputError, match="junk.tar is unreadable"):
        people_census([tmp_path / "junk.tar"])


def test_preview_draws_each_person_in_its_colour(datasets):
    import cv2

    from diffusion_hpc.data.schema import persons_of
    from diffusion_hpc.data.inspect import preview_grid
    from diffusion_hpc.data.preview import overlay_persons, person_colour

    _, _, samples = datasets
    scene = scene_of(samples[:2])
    people = persons_of(scene)
    no_joints = [{**p, "keypoints2d": np.zeros((17, 3))} for p in people]
    canvas = overlay_persons(scene["mask"], no_joints)
    ring = np.ones((5, 5), np.uint8)
    for p, person in enumerate(people):
        drawn = np.all(canvas == person_colour(p), axis=-1)
        assert drawn.sum() >= 8, p  # its outline is there, in its colour ...
        mask = person["mask"].astype(np.uint8)
        edge = cv2.dilate(mask, ring) != cv2.erode(mask, ring)
        assert not (drawn & ~edge).any(), p  # ... and only on its own silhouette's edge
    canvas = overlay_persons(scene["mask"], people)
    for p, person in enumerate(people):
        kp = person["keypoints2d"]
        for u, v, vis in kp[kp[:, 2] == 2][:3]:  # visible joints: filled dots of the person's colour
            assert tuple(canvas[int(round(v)), int(round(u))]) == person_colour(p)
    grid = preview_grid([scene, samples[3]], tile=64)
    assert grid.shape == (128, 192, 3)


# ---------------------------------------------------------------- the quality report, per person


def test_quality_scores_per_person():
    from diffusion_hpc.eval.quality import person_scores, person_stats

    image = np.zeros((8, 8, 3), np.uint8)
    v1 = {"key": "a", "image": image, "mask": np.ones((8, 8), bool), "scores": {"prior_score": 50.0, "hard": 0.0}}
    assert person_scores(v1) == [{"scores": {"prior_score": 50.0, "hard": 0.0}, "visible_fraction": 1.0}]
    v2 = {"key": "b", "image": image, "mask": np.ones((8, 8), bool), "scores": {"prior_score": 300.0, "hard": 1.0, "people": 2},
          "persons": [{"scores": {"prior_score": 300.0, "hard": 1.0, "mask_area": 0.2}, "visible_fraction": 1.0},
                      {"scores": {"prior_score": 20.0, "hard": 0.0, "mask_area": 0.1}, "visible_fraction": 0.5}]}
    people = person_scores(v2)
    assert [p["scores"]["prior_score"] for p in people] == [300.0, 20.0]  # the persons', not the image's max
    lone = {**v1, "persons": [{"scores": {}, "visible_fraction": 1.0}]}  # a one-person v2 run keeps image scores
    assert person_scores(lone)[0]["scores"]["prior_score"] == 50.0

    stats = person_stats([person_scores(v1), people], hard_threshold=None, config={"body_model": "anny"})
    assert (stats["images"], stats["persons"], stats["per_image"]) == (2, 3, {1: 1, 2: 1})
    assert stats["persons_per_image"] == pytest.approx(1.5)
    assert stats["occluded"] == 1 and stats["occluded_share"] == pytest.approx(1 / 3)
    assert stats["visible_fraction"]["min"] == 0.5
    assert stats["prior_score"]["n"] == 3 and stats["prior_score"]["hard_share"] == pytest.approx(1 / 3)
    assert stats["scores"]["mask_area"]["n"] == 2 and stats["scores"]["prior_score"]["median"] == 50.0
    assert person_stats([people], hard_threshold=100.0)["prior_score"]["hard_share"] == pytest.approx(1 / 2)


# ---------------------------------------------------------------- multi-person shards


def scene_record(scene: dict, key: str, index: int):
    """The :class:`SampleRecord` of a :func:`scene_of` sample."""
    from diffusion_hpc.data.schema import PersonLabel, SampleRecord

    persons = [PersonLabel(p["body_model"], p["params"], p["joints3d"], p["keypoints2d"], scores=p["scores"],
                           pose_source=p["pose_source"], visible_fraction=p["visible_fraction"], labels=p["labels"])
               for p in scene["persons"]]  # fmt: skip
    return SampleRecord(key=key, index=index, seed=index, image=scene["image"], mask=scene["mask"],
                        depth=np.where(scene["mask"], 3.0, 0.0).astype(np.float32), K=scene["K"], mode="D",
                        persons=persons, instance=scene["instance"], scores={"people": len(persons)})


@pytest.fixture(scope="module")
def scene_dataset(datasets, tmp_path_factory):
    """A dataset of two samples of 3 and 2 persons (:func:`scene_of`), written by the dataset writer."""
    from diffusion_hpc.config import GenerateConfig
    from diffusion_hpc.data import open_dataset
    from diffusion_hpc.data.writer import DatasetWriter, ManifestRow

    _, _, samples = datasets
    scenes = [scene_of(samples[:3], [{"prior_score": 10.0 * (p + 1)} for p in range(3)]), scene_of(samples[2:4])]
    root = tmp_path_factory.mktemp("scenes") / "d"
    writer = DatasetWriter(root, GenerateConfig(n=2, image_size=(64, 64)).to_yaml()).open()
    records = [scene_record(s, f"{i:06d}", i) for i, s in enumerate(scenes)]
    writer.write_shard(0, records, [ManifestRow(r.key, r.index, 0, r.seed, "ok", scores=r.scores) for r in records])
    writer.finalize(1, {})
    return root, scenes, list(open_dataset(root))


def test_multi_person_shards_train_inspect_and_count(scene_dataset):
    from diffusion_hpc.data.inspect import people_census, summarize
    from diffusion_hpc.hmr.data import SyntheticShards, count_persons

    root, scenes, read = scene_dataset
    assert [len(s["persons"]) for s in read] == [3, 2]
    occluded = sum(p["visible_fraction"] < 1 for s in scenes for p in s["persons"])
    census = people_census(sorted((root / "shards").glob("*.tar")))
    assert census == {"images": 2, "persons": 5, "per_image": {2: 1, 3: 1}, "occluded": occluded}
    assert "people    5 persons in 2 images" in summarize(root)
    ds = SyntheticShards([root], size=CROP, augment=None, shuffle_buffer=1, repeat=False)
    items = list(ds)
    counted = count_persons([root])
    assert len(items) == ds.counts.used == counted.used and ds.counts.skipped == counted.skipped
    assert counted.persons == 5 and counted.per_image == {3: 1, 2: 1}
    usable = [p for s in read for p in s["persons"] if (p["keypoints2d"][:, 2] == 2).sum() >= 6
              and p["visible_fraction"] >= 0.2]
    assert len(items) == len(usable)
    for item, person in zip(items, usable):
        np.testing.assert_allclose(item["global_orient"].numpy(), person["params"]["global_orient"], atol=1e-6)


def fake_converter(params: dict) -> list[dict]:
    """Stands in for the fit: label b carries body b's own translation and root rotation, so a test
    sees which person each stored label belongs to (the fit itself is tested in test_convert.py)."""
    n = len(params["transl"])
    return [{"body_model": "smpl",
             "params": {"global_orient": params["global_orient"][b], "body_pose": np.zeros(69, np.float32),
                        "betas": np.zeros(10, np.float32), "transl": params["transl"][b]},
             "joints3d": {"coco17": np.zeros((17, 3))},
             "fit": {"surface_mm": float(b), "joints_mm": 1.0, "flagged": b % 2 == 1}} for b in range(n)]


@pytest.mark.parametrize("batch_size", [1, 4])
def test_convert_labels_every_person(scene_dataset, datasets, tmp_path, batch_size):
    """Every person of a multi-person sample gets its own label (label arrays with a leading person
    axis in the shard; the reader returns each person's), whatever the batch; a schema-1 sample keeps
    its one label at the top."""
    from diffusion_hpc.data import open_dataset
    from diffusion_hpc.data.convert import label_shard

    root, _, read = scene_dataset
    shutil.copytree(root, tmp_path / "d")
    (shard,) = sorted((tmp_path / "d" / "shards").glob("*.tar"))
    persons, flagged = label_shard(shard, fake_converter, "smpl", batch_size)
    assert (persons, flagged) == (5, 2)  # persons counted, not samples
    for before, after in zip(read, open_dataset(tmp_path / "d")):
        assert "labels" not in after and len(after["persons"]) == len(before["persons"])
        for own, person in zip(before["persons"], after["persons"]):
            label = person["labels"]["smpl"]
            np.testing.assert_allclose(label["params"]["transl"], own["params"]["transl"], atol=1e-6)
            np.testing.assert_allclose(label["params"]["global_orient"], own["params"]["global_orient"], atol=1e-6)
            assert label["params"]["body_pose"].shape == (69,) and label["joints3d"]["coco17"].shape == (17, 3)
            np.testing.assert_array_equal(person["params"]["transl"], own["params"]["transl"])  # own body untouched
    with tarfile.open(shard) as tar:
        arrays = np.load(io.BytesIO(tar.extractfile("000000.smpl.npz").read()))
        assert arrays["params.transl"].shape == (3, 3) and arrays["fit.flagged"].shape == (3,)

    shutil.copytree(datasets[1], tmp_path / "v1")
    (shard,) = sorted((tmp_path / "v1" / "shards").glob("*.tar"))
    assert label_shard(shard, fake_converter, "smpl", batch_size)[0] == 4
    for sample in open_dataset(tmp_path / "v1"):
        assert "persons" not in sample
        np.testing.assert_allclose(sample["labels"]["smpl"]["params"]["transl"], sample["params"]["transl"], atol=1e-6)


def test_label_models_fit_every_person_of_a_record(datasets, monkeypatch, fake_smpl):
    """--label-models: one batched fit over every person of the batch's records; each person gets
    its own label (a one-person shorthand record too)."""
    from diffusion_hpc.config import GenerateConfig
    from diffusion_hpc.data.schema import SampleRecord
    from diffusion_hpc.pipeline import labels

    _, _, samples = datasets
    scene = scene_record(scene_of(samples[:3]), "000000", 0)
    one = samples[3]["persons"][0]
    lone = SampleRecord(key="000001", index=1, seed=1, image=samples[3]["image"], mask=samples[3]["mask"],
                        depth=samples[3]["depth"], K=samples[3]["K"], mode="D", body_model="anny",
                        params=one["params"], joints3d=one["joints3d"], keypoints2d=one["keypoints2d"])
    calls = []
    monkeypatch.setattr(labels, "converter_for", lambda config, model: lambda p: calls.append(len(p["transl"]))
                        or fake_converter(p))
    timings: dict = {}
    labels.add_label_models(GenerateConfig(label_models=["anny", "smpl"], smpl_path=fake_smpl), [scene, lone], timings)
    assert calls == [4] and timings["labels"] >= 0  # one fit of the 4 persons
    for person in scene.people() + lone.people():
        np.testing.assert_allclose(person.labels["smpl"]["params"]["transl"], person.params["transl"], atol=1e-6)
    assert set(lone.labels) == {"smpl"}


# ---------------------------------------------------------------- end to end: mode D --people 2-3


@pytest.fixture(scope="module")
def crowd(tmp_path_factory):
    """Mode D, render baseline, 2-3 people per image, 96 px."""
    from diffusion_hpc.config import GenerateConfig
    from diffusion_hpc.data import open_dataset
    from diffusion_hpc.pipeline.generate import generate

    out = tmp_path_factory.mktemp("crowd") / "d"
    generate(GenerateConfig(n=4, image_size=(96, 96), batch_size=4, people="2-3"), out=out, progress=False)
    return out, list(open_dataset(out))


def test_mode_d_people_train_inspect_preview_quality(crowd):
    from diffusion_hpc.data.schema import persons_of
    from diffusion_hpc.data.inspect import people_census, summarize
    from diffusion_hpc.data.preview import overlay_persons, person_colour
    from diffusion_hpc.eval.quality import person_scores, person_stats
    from diffusion_hpc.hmr.data import SyntheticShards, count_persons, dataset_person_crops, trainable

    path, samples = crowd
    sizes = [len(s["persons"]) for s in samples]
    assert all(2 <= n <= 3 for n in sizes)
    persons = [p for s in samples for p in s["persons"]]

    # training: one crop per trainable person, with that person's labels
    ds = SyntheticShards([path], size=CROP, augment=None, shuffle_buffer=1, repeat=False)
    items = list(ds)
    usable = [p for p in persons if trainable(p)]
    assert len(items) == len(usable) == ds.counts.used and ds.counts.persons == len(persons)
    assert count_persons([path]).per_image == {n: sizes.count(n) for n in set(sizes)}
    for item, person in zip(items, usable):
        np.testing.assert_allclose(item["global_orient"].numpy(), person["params"]["global_orient"], atol=1e-6)
        np.testing.assert_allclose(item["joints3d"].numpy()[:, :3], person["joints3d"]["h36m17"], atol=1e-6)
    # evaluation (dhpc evaluate --data, training's validation) scores the same persons' crops
    scored = dataset_person_crops(path, CROP)
    assert len(scored) == len(items) and all(float(c["has_params"]) == 0 for c in scored)
    for crop, item in zip(scored, items):
        torch.testing.assert_close(crop["keypoints2d"], item["keypoints2d"])
    assert len(dataset_person_crops(path, CROP, limit=3)) == 3

    # inspect: people per image, persons, occluded
    census = people_census(sorted((path / "shards").glob("*.tar")))
    occluded = sum(p["visible_fraction"] < 1 for p in persons)
    assert census == {"images": 4, "persons": len(persons), "per_image": {n: sizes.count(n) for n in sorted(set(sizes))},
                      "occluded": occluded}
    assert f"people    {len(persons)} persons in 4 images; {occluded} occluded" in summarize(path)

    # preview: every person's outline in its own colour
    for sample in samples:
        canvas = overlay_persons(sample["mask"], persons_of(sample))
        for p in range(len(sample["persons"])):
            assert np.all(canvas == person_colour(p), axis=-1).any(), (sample["key"], p)

    # quality: per-person scores are the persons', the image's prior score their maximum
    per_image = [person_scores(s) for s in samples]
    for sample, people in zip(samples, per_image):
        scores = [p["scores"]["prior_score"] for p in people]
        assert scores == [p["scores"]["prior_score"] for p in sample["persons"]]
        assert sample["scores"]["prior_score"] == pytest.approx(max(scores))
    stats = person_stats(per_image, hard_threshold=60.0)
    assert stats["persons"] == len(persons) and stats["prior_score"]["n"] == len(persons)
    hard = np.mean([p["scores"]["prior_score"] >= 60.0 for p in persons])
    assert stats["prior_score"]["hard_share"] == pytest.approx(hard)


def test_quality_report_page_shows_the_persons(tmp_path):
    """quality.json's persons section reaches quality.html: its table, people per image and every figure."""
    import html

    from diffusion_hpc.eval.quality import person_stats
    from diffusion_hpc.eval.report import flatten_figures, write_report

    people = [[{"scores": {"prior_score": 300.0, "mask_area": 0.2}, "visible_fraction": 1.0},
               {"scores": {"prior_score": 20.0, "mask_area": 0.1}, "visible_fraction": 0.5}],
              [{"scores": {"prior_score": 50.0, "mask_area": 0.3}, "visible_fraction": 1.0}]]
    result = {"settings": {}, "real": "real", "comparison": [{"name": "crowd", "persons": 3, "persons_per_image": 1.5,
                                                              "occluded_share": 1 / 3, "hard_share_persons": 1 / 3}],
              "persons": {"crowd": person_stats(people, hard_threshold=100.0)}}
    files = write_report(result, tmp_path)
    page = open(files["html"]).read()
    report = json.loads(open(files["json"]).read())
    assert report["persons"]["crowd"]["per_image"] == {"1": 1, "2": 1}
    assert "<h2>Persons: crowd</h2>" in page and "hard share (persons)" in page and "occluded persons" in page
    assert "Pose prior over persons: hard share 0.333" in page
    for path, _ in flatten_figures(report):
        assert html.escape(path) in page, path


def test_inspect_cli_counts_the_crowd(crowd, tmp_path):
    path, samples = crowd
    proc = run_cli("inspect", str(path), "--preview", str(tmp_path / "p.png"))
    assert proc.returncode == 0, proc.stderr
    persons = sum(len(s["persons"]) for s in samples)
    assert f"people    {persons} persons in 4 images" in proc.stdout and "people per image:" in proc.stdout
    assert (tmp_path / "p.png").stat().st_size > 0
