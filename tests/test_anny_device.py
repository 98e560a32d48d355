"""Anny on a device and in a precision: ``body.to(device, dtype)`` and ``body_on_device`` give a body
whose forward runs there, sharing one copy of the model per process and placement, the CPU copy
untouched.

No GPU here: the precision move (float64) runs for real and must give the same bodies; the device
move is checked on the "meta" device, where every tensor the forward reads must land (the forward
itself cannot run there: anny's skinning kernels are NVIDIA warp's).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.overrides import TorchFunctionMode

from diffusion_hpc.body import get_body_model
from diffusion_hpc.body.anny import AnnyBody
from diffusion_hpc.hmr.model import body_device, body_on_device

META = torch.device("meta")


def random_params(batch: int, seed: int, dtype=torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    params = {"global_orient": torch.randn(batch, 3, generator=g) * 0.6,
              "body_pose": torch.randn(batch, 30, 3, generator=g) * 0.35,
              "phenotype": torch.rand(batch, 6, generator=g), "transl": torch.randn(batch, 3, generator=g)}  # fmt: skip
    return {k: v.to(dtype) for k, v in params.items()}


def body_tensors(body: AnnyBody) -> dict[str, torch.Tensor]:
    """Every tensor a forward pass of ``body`` reads from the body: its buffers, and the shared core's
    and COCO regressor's buffers, parameters and plain tensor attributes (``faces``)."""
    found = {f"body.{k}": v for k, v in body.named_buffers()}
    for prefix, module in (("core", body._core), ("regressor", body._regressor)):
        for name, sub in module.named_modules():
            for key, value in [*sub._buffers.items(), *sub._parameters.items(), *vars(sub).items()]:
                if isinstance(value, torch.Tensor):
                    found[f"{prefix}.{name}.{key}".replace("..", ".")] = value
    return found


def core_snapshot(body: AnnyBody) -> dict[str, tuple]:
    return {k: (v.device, v.dtype, v.data_ptr()) for k, v in body_tensors(body).items()}


@pytest.fixture(scope="module")
def anny():
    return get_body_model("anny")


def test_a_float64_body_gives_the_same_bodies_and_shares_one_copy(anny):
    """The moved body's vertices and joints equal the original's (< 1e-5 m) for random poses and
    shapes; two bodies in float64 share one core; the process's float32 body is untouched."""
    before = core_snapshot(anny)
    moved = copy.deepcopy(anny).to(torch.float64)
    again = AnnyBody(dtype=torch.float64)
    assert moved.dtype == again.dtype == torch.float64 and anny.dtype == torch.float32
    assert moved._core is again._core and moved._core is not anny._core  # one copy per placement
    assert core_snapshot(anny) == before  # the shared CPU float32 model never changes in place
    assert moved.state_dict() == {}  # the body saves nothing (not the model, not its index buffers)
    params = random_params(32, seed=1)
    ref = anny(params)
    out = moved({k: v.double() for k, v in params.items()})
    assert out.vertices.dtype == torch.float64 and out.vertices.shape == ref.vertices.shape
    assert float((out.vertices - ref.vertices.double()).abs().max()) < 1e-5
    for name in anny.joint_sets:
        assert float((out.joints[name] - ref.joints[name].double()).abs().max()) < 1e-5, name
    back = moved.to(torch.float32)  # and back: the process's loaded model again, not a third copy
    assert back._core is anny._core


class DtypesSeen(TorchFunctionMode):
    """Records the device and dtype of every floating tensor handed to a torch function."""

    def __init__(self):
        super().__init__()
        self.seen: set[tuple[str, torch.dtype]] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        stack = [args, kwargs or {}]
        while stack:
            x = stack.pop()
            if isinstance(x, torch.Tensor):
                if x.is_floating_point():
                    self.seen.add((x.device.type, x.dtype))
            elif isinstance(x, (list, tuple)):
                stack.extend(x)
            elif isinstance(x, dict):
                stack.extend(x.values())
        return func(*args, **(kwargs or {}))


def test_the_forward_of_a_moved_body_touches_only_its_placement(anny):
    """Inside the forward of a float64 body every floating tensor any torch call sees is float64 on
    the CPU: no float32 constant of the body or the model is mixed in."""
    moved = copy.deepcopy(anny).double()
    params = random_params(4, seed=2, dtype=torch.float64)
    with DtypesSeen() as mode:
        out = moved(params)
    assert out.vertices.dtype == torch.float64
    assert mode.seen == {("cpu", torch.float64)}, mode.seen


def test_every_tensor_of_a_body_moved_to_a_device_is_there(anny):
    """body_on_device on another device: a body whose every tensor (its buffers, the model's buffers
    and faces, the COCO regressor) is on that device, reported by body_device; the process's
    instance stays on the CPU, and a second body there shares the same model copy."""
    before = core_snapshot(anny)
    moved = body_on_device(anny, META)
    assert moved is not anny and body_device(moved) == META and moved.device == META
    tensors = body_tensors(moved)
    assert {"core.faces", "core.blendshapes", "regressor.regression_weights", "body._h36m_bone"} <= set(tensors)
    assert {k for k, v in tensors.items() if v.device != META} == set()
    assert moved.faces.device == META
    assert body_on_device(anny, "cpu") is anny and body_device(anny) == torch.device("cpu")
    assert core_snapshot(anny) == before
    assert body_on_device(anny, META)._core is moved._core and AnnyBody(device=META)._core is moved._core


def test_training_module_keeps_anny_on_its_device(anny):
    """HMRModule's body follows the module's device (moved once, the same body at every step),
    so regress() hands the body parameters on its own device: no CPU round trip per step."""
    from diffusion_hpc.hmr.train import HMRModule

    module = HMRModule(backbone="tiny")
    assert body_device(module.body) == torch.device("cpu") and module.body is anny  # on the CPU: the shared instance
    module.to(META)
    body = module.body
    assert body_device(body) == META and module.body is body  # moved once, then reused
    assert {k for k, v in body_tensors(body).items() if v.device != META} == set()
    assert body_device(anny) == torch.device("cpu")
