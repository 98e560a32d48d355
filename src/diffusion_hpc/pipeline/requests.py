"""Sample requests: every random draw of a sample, from (run seed, sample index) alone.

A :class:`SampleRequest` fixes the pose, the body shape, the camera and the seed of the image
generator before any model runs, so a sample is the same whatever batch, shard or process makes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from diffusion_hpc.config import GenerateConfig
from diffusion_hpc.data.seeds import people_rng, sample_key, sample_rng, sample_seed
from diffusion_hpc.generate.base import prompt_for_sample
from diffusion_hpc.geometry.camera import intrinsics_from_fov, rotation_x, rotation_y, rotation_z


@dataclass
class PersonDraw:
    """Another person of a mode-D scene (``--people``): its pose row, body shape and turn (radians)
    about the vertical axis."""

    pose_index: int
    shape: np.ndarray  # (shape_dim,)
    yaw: float


@dataclass
class SampleRequest:
    """What one sample will be. Angles in radians; rotation (3, 3) takes the body model's canonical
    frame to camera orientation (placement in depth is solved later, once the mesh is known).

    The scene of a multi-person sample (``--people``): ``view`` (3, 3) takes the upright group frame
    to the camera orientation (elevation, roll; ``rotation = view @ rotation_y(yaw) @ canonical``
    for the sample's own person), ``others`` are the other people (drawn from
    :func:`~diffusion_hpc.data.seeds.people_rng`, empty for one person) and ``layout_seed`` seeds
    where everyone stands."""

    index: int
    key: str
    seed: int
    pose_index: int
    shape: np.ndarray  # (shape_dim,)
    K: np.ndarray  # (3, 3)
    rotation: np.ndarray  # (3, 3) canonical -> camera
    fill: float
    offset: tuple[float, float]
    generator_seed: int
    yaw: float = 0.0
    view: np.ndarray = field(default_factory=lambda: np.eye(3))
    others: list[PersonDraw] = field(default_factory=list)
    layout_seed: int = 0

    @property
    def people(self) -> int:
        """People in the scene: the sample's own person and the others."""
        return 1 + len(self.others)


def camera_rotation(canonical_to_camera: np.ndarray, yaw: float, elevation: float, roll: float) -> np.ndarray:
    """(3, 3) rotation: the body turned by ``yaw`` about its vertical axis, seen from ``elevation``
    above (positive: the camera looks down, the head comes nearer), with camera ``roll``.

    In the upright camera frame the body's vertical axis is -y, so yaw is a rotation about y,
    elevation about x, roll about the optical axis z.
    """
    return view_rotation(elevation, roll) @ rotation_y(yaw) @ canonical_to_camera


def view_rotation(elevation: float, roll: float) -> np.ndarray:
    """(3, 3) the upright group frame -> camera orientation: seen from ``elevation`` above, camera ``roll``."""
    return rotation_z(roll) @ rotation_x(elevation)


def make_request(config: GenerateConfig, index: int, num_poses: int, shape_sampler, canonical_to_camera: np.ndarray) -> SampleRequest:
    """Draw everything random about sample ``index``.

    Args:
        shape_sampler: callable(rng) -> (shape_dim,) array (the body model's shape distribution).
        canonical_to_camera: (3, 3) of the body model.
    """
    rng = sample_rng(config.seed, index)
    cam = config.camera
    height, width = config.image_size
    pose_index = int(rng.integers(num_poses))
    fov = rng.uniform(*cam.fov_deg)
    yaw, elevation, roll = (np.deg2rad(rng.uniform(*r)) for r in (cam.yaw_deg, cam.elevation_deg, cam.roll_deg))
    fill = float(rng.uniform(*cam.fill))
    offset = (float(rng.uniform(-1, 1)), float(rng.uniform(-1, 1)))
    generator_seed = int(rng.integers(2**63 - 1))
    shape = np.asarray(shape_sampler(np.random.default_rng(rng.integers(2**63 - 1))), np.float32)
    seed = sample_seed(config.seed, index)
    others, layout_seed = draw_others(config, seed, num_poses, shape_sampler)
    return SampleRequest(
        index=index,
        key=sample_key(index),
        seed=seed,
        pose_index=pose_index,
        shape=shape,
        K=intrinsics_from_fov(fov, width, height),
        rotation=camera_rotation(canonical_to_camera, yaw, elevation, roll),
        fill=fill,
        offset=offset,
        generator_seed=generator_seed,
        yaw=float(yaw),
        view=view_rotation(elevation, roll),
        others=others,
        layout_seed=layout_seed,
    )


def draw_others(config: GenerateConfig, seed: int, num_poses: int, shape_sampler) -> tuple[list[PersonDraw], int]:
    """The other people of the scene of the sample seeded ``seed`` and the seed of their layout.

    From the sample's people stream (:func:`~diffusion_hpc.data.seeds.people_rng`), in order: the
    number of people P in ``config.people_range()``, then for each of the P - 1 others its pose row,
    turn (``camera.yaw_deg``) and shape, then the layout seed. A one-person run draws nothing (([], 0)).
    """
    fewest, most = config.people_range()
    if most == 1:
        return [], 0
    rng = people_rng(seed)
    count = int(rng.integers(fewest, most + 1))
    others = []
    for _ in range(count - 1):
        pose_index = int(rng.integers(num_poses))
        yaw = float(np.deg2rad(rng.uniform(*config.camera.yaw_deg)))
        shape = np.asarray(shape_sampler(np.random.default_rng(rng.integers(2**63 - 1))), np.float32)
        others.append(PersonDraw(pose_index, shape, yaw))
    return others, int(rng.integers(2**63 - 1))


# --------------------------------------------------------------------------------------------
# modes T and R: guides and their variants

def split_index(index: int, k: int) -> tuple[int, int]:
    """Sample index -> (guide index, variant index): guide = index // k, variant = index % k.

    Variant 0 is the estimate itself; variants 1..k-1 are augmented poses.
    """
    return int(index) // int(k), int(index) % int(k)


def variants_in_run(guide: int, k: int, n: int) -> int:
    """How many samples of an ``n``-sample run belong to ``guide`` (k, or fewer for the last guide).

    A guide's start-image cost is shared by exactly these samples, so the shares add up to what
    was spent.
    """
    return max(0, min(int(k), int(n) - int(guide) * int(k)))


def guides_of(indices: range, k: int) -> list[int]:
    """The guides whose samples make up ``indices`` (a shard: whole guides, see GenerateConfig)."""
    return sorted({split_index(i, k)[0] for i in indices})


FULL_PROMPT_STARTS = ("a ", "an ", "the ")


def is_full_prompt(text: str) -> bool:
    """A prompt line is used verbatim when it starts with an article ("a photo of a skier") or
    holds a comma; otherwise it is an action phrase put into the templates ("doing a backflip")."""
    t = text.strip().lower()
    return t.startswith(FULL_PROMPT_STARTS) or "," in t


def prompt_text(line: str, seed: int) -> str:
    """The prompt of a guide (or mode-D sample) from one prompt line and its seed.

    Full prompts are used as they are; an action phrase goes into a template of DESIGN §2 chosen
    by ``seed`` (:func:`~diffusion_hpc.generate.base.prompt_for_sample`); a line with an
    ``{action}`` placeholder is refused (it is a template, not a prompt).
    """

    if "{action}" in line:
        raise ValueError(f"prompt {line!r} is a template; pass the action phrase itself")
    return line.strip() if is_full_prompt(line) else prompt_for_sample(line, seed)


def variant_prompt(line: str, run_seed: int, index: int) -> str:
    """The regeneration prompt of sample ``index`` of modes T and R (variant ``index % k`` of guide
    ``index // k``): :func:`prompt_text` with the sample's own seed
    (:func:`~diffusion_hpc.data.seeds.sample_seed`), so every variant draws its own template, as the
    original draws one per regenerated image, while its guide's start image keeps the guide's draw.
    Reproducible and order-free: it depends on (run seed, sample index) only.
    """
    return prompt_text(line, sample_seed(run_seed, index))


def pick_line(lines: list[str], item: int) -> str:
    """Prompt line of guide (mode T/R) or sample (mode D) ``item``: round robin over the lines."""
    return lines[int(item) % len(lines)]
