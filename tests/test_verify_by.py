"""Label verification reading MediaPipe's landmarks without the body fit (``verify_by landmarks``)
against reading the fitted body (``verify_by estimate``): both score a right label high and a wrong one
low, the landmark reading runs no fit, and the choice is recorded; a regressor has no landmarks of its
own. ``verify_by label-box`` (the landmark model alone on the region the label's joints give, no person
detector; the default with the MediaPipe estimator) catches a wrong label too, also for each person of
a several-people sample, and reads alike on the run's device (``landmark_runtime torch``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import skimage.data
from PIL import Image

from diffusion_hpc.config import GenerateConfig
from diffusion_hpc.data import open_dataset
from diffusion_hpc.data.schema import persons_of
from diffusion_hpc.pipeline.generate import Generator

from conftest import manifest_rows
from test_multiperson_guided import two_people

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = 128
#: samples whose final image is their start photo mirrored: the label is wrong for the image
WRONG = {2, 3}


@pytest.fixture(scope="module")
def guides(tmp_path_factory):
    folder = tmp_path_factory.mktemp("guides")
    Image.fromarray(skimage.data.astronaut()).save(folder / "astronaut.png")
    return folder


class PhotoFinal:
    """The tiny regeneration (its cost counted), each final image then replaced by its start photo, a
    real backbone's image of the label's person (the tiny backbone draws noise), or, for the samples
    of :data:`WRONG`, by that photo mirrored: the person stands elsewhere and turned round."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def generate(self, batch):
        result = self.inner.generate(batch)
        from diffusion_hpc.data.seeds import sample_seed

        wrong = {sample_seed(9, i) for i in WRONG}
        result.images = np.stack([im[:, ::-1] if seed in wrong else im
                                  for im, seed in zip(batch.start_images, batch.seeds)])  # fmt: skip
        return result


def right_and_wrong(scores: list[list[float]]) -> tuple[list[float], list[float]]:
    """The scores of the samples whose label is right for their final image, and of those whose final is
    mirrored (:data:`WRONG`); ``scores`` per sample index, one per labelled person."""
    right = [p for i, ps in enumerate(scores) if i not in WRONG for p in ps]
    return right, [p for i, ps in enumerate(scores) if i in WRONG for p in ps]


def run(tiny_backbone, guides, out, verify_by: str | None, size: int = SIZE, **options) -> tuple[list[dict], dict[str, int]]:
    """Mode R, four samples of one photo (k = 1: each label is the estimate of its final's photo),
    verified; (manifest rows by index, calls of the MediaPipe estimator's fit and landmark reading).
    ``options``: more GenerateConfig fields."""
    config = GenerateConfig(mode="R", guides=guides, backbone=str(tiny_backbone), image_size=(size, size), n=4, k=1,
                            seed=9, batch_size=4, verify_by=verify_by, **options)  # fmt: skip
    gen = Generator(config, progress=False)
    gen.load_models()
    gen.stages.image_generator = PhotoFinal(gen.stages.image_generator)
    fitter = gen.stages.estimator.model
    calls = {"fit": 0, "read_keypoints": 0}
    for name in calls:
        method = getattr(fitter, name)

        def counted(*args, _name=name, _method=method, **kwargs):
            calls[_name] += 1
            return _method(*args, **kwargs)

        setattr(fitter, name, counted)
    gen.run(out)
    rows = sorted(manifest_rows(out), key=lambda r: r["index"])
    return rows, calls


def test_landmarks_and_the_fit_both_catch_a_wrong_label(tiny_backbone, guides, tmp_path):
    """With photo finals, the samples whose image is their photo agree with their label and the samples
    whose image is the photo mirrored do not, whichever reading verifies; the landmark reading fits only
    the head's start images, the fit reading fits the finals too; config.yaml and run.json record the
    choice."""
    default, calls = run(tiny_backbone, guides, tmp_path / "landmarks", "landmarks")
    by_fit, fit_calls = run(tiny_backbone, guides, tmp_path / "estimate", "estimate")
    assert calls == {"fit": 1, "read_keypoints": 1}  # the head's one fit call; verification reads landmarks
    assert fit_calls == {"fit": 2, "read_keypoints": 0}  # the head's and verification's
    for rows in (default, by_fit):
        assert [r["status"] for r in rows] == ["ok"] * 4
        pck = [r["scores"]["pck_agreement"] for r in rows]
        assert all(r["scores"]["person_found"] == 1.0 for r in rows)
        right, wrong = right_and_wrong([[p] for p in pck])
        assert min(right) >= 0.8 and max(wrong) <= 0.3, pck
    for name, value in (("landmarks", "landmarks"), ("estimate", "estimate")):
        assert json.loads((tmp_path / name / "run.json").read_text())["verify_by"] == value
        assert f"verify_by: {value}" in (tmp_path / name / "config.yaml").read_text()


def test_verify_by_errors_name_the_option_and_the_fix(tmp_path):
    with pytest.raises(ValueError, match="verify_by: --verify-by landmarks .* pass --verify-by estimate"):
        GenerateConfig(mode="D", verify=True, estimator="hmr", estimator_checkpoint=tmp_path, verify_by="landmarks")
    with pytest.raises(ValueError, match="verify_by: .* this run does not verify: pass --verify"):
        GenerateConfig(mode="D", verify_by="estimate")
    assert GenerateConfig(mode="D", verify=True).verify_by == "label-box"
    assert GenerateConfig(mode="D", verify=True, estimator="hmr", estimator_checkpoint=tmp_path).verify_by == "estimate"
    assert GenerateConfig(mode="D").verify_by is None


def test_the_label_box_reading_catches_a_wrong_label_without_the_person_detector(tiny_backbone, guides, tmp_path):
    """``verify_by label-box`` (the default) reads each label's person with MediaPipe's landmark model alone
    on the region the label's joints give: the photo finals agree with their labels, the mirrored ones
    (the person elsewhere and turned round) do not, nothing is fitted, and the choice is recorded."""
    rows, calls = run(tiny_backbone, guides, tmp_path / "label-box", None)
    assert calls == {"fit": 1, "read_keypoints": 1}  # the head's fit; verification reads the label's boxes
    assert [r["status"] for r in rows] == ["ok"] * 4
    pck = [r["scores"]["pck_agreement"] for r in rows]
    right, wrong = right_and_wrong([[p] for p in pck])
    assert min(right) >= 0.8 and max(wrong) <= 0.3, pck
    assert all(rows[i]["scores"]["person_found"] == 1.0 for i in range(4) if i not in WRONG)
    assert json.loads((tmp_path / "label-box" / "run.json").read_text())["verify_by"] == "label-box"
    assert "verify_by: label-box" in (tmp_path / "label-box" / "config.yaml").read_text()
    with pytest.raises(ValueError, match="verify_by: --verify-by label-box .* pass --verify-by estimate"):
        GenerateConfig(mode="D", verify=True, estimator="hmr", estimator_checkpoint=tmp_path, verify_by="label-box")


def test_label_box_on_the_runs_device_reads_as_mediapipes_own_graph(tiny_backbone, guides, tmp_path):
    """``--landmark-runtime torch`` runs MediaPipe Pose's person detector and landmark model as torch operations
    on the run's device (here the CPU), all images of a batch in one call, for the head's whole-image pass and
    label-box verification: the same verdicts and agreement as MediaPipe's own graph (the default on the CPU),
    and run.json says which read; a run without the MediaPipe estimator refuses the option."""
    graph, _ = run(tiny_backbone, guides, tmp_path / "graph", None)
    device, calls = run(tiny_backbone, guides, tmp_path / "torch", None, landmark_runtime="torch")
    assert calls == {"fit": 1, "read_keypoints": 1}
    assert [r["status"] for r in device] == [r["status"] for r in graph] == ["ok"] * 4
    for ours, theirs in zip(device, graph):
        assert ours["scores"]["person_found"] == theirs["scores"]["person_found"]
        # at most one keypoint's share apart: a landmark at a rounding tie may jump (test_pose_detector_model)
        assert abs(ours["scores"]["pck_agreement"] - theirs["scores"]["pck_agreement"]) <= 0.1, (ours, theirs)
    right, wrong = right_and_wrong([[r["scores"]["pck_agreement"]] for r in device])
    assert min(right) >= 0.8 and max(wrong) <= 0.3
    recorded = {name: json.loads((tmp_path / name / "run.json").read_text())["estimator"]["landmark_runtime"]
                for name in ("graph", "torch")}
    assert recorded == {"graph": "mediapipe", "torch": "torch cpu float32"}
    with pytest.raises(ValueError, match="landmark_runtime: .* this run has none .*: leave --landmark-runtime out"):
        GenerateConfig(mode="D", landmark_runtime="torch")


def test_label_box_reads_each_person_of_a_two_people_sample_where_its_label_is(tiny_backbone, tmp_path):
    """Two people side by side (the astronaut and Grace Hopper, tests/test_multiperson_guided.py's start
    image): each person's label is read on its own region; on the photo finals both people agree with
    their labels, on the mirrored ones (the two exchanged places and turned round) neither does."""
    folder = tmp_path / "pair"
    folder.mkdir()
    pair = two_people()
    Image.fromarray(pair).save(folder / "pair.png")
    rows, _ = run(tiny_backbone, folder, tmp_path / "label-box", None, size=pair.shape[0])
    assert [r["status"] for r in rows] == ["ok"] * 4
    samples = sorted(open_dataset(tmp_path / "label-box"), key=lambda s: s["index"])
    persons = [[p["scores"]["pck_agreement"] for p in persons_of(s)] for s in samples]
    assert all(len(p) == 2 for p in persons), persons
    right, wrong = right_and_wrong(persons)
    assert min(right) >= 0.8 and max(wrong) <= 0.3, persons
