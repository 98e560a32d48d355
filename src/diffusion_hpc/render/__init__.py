"""Batched mesh renderers: camera-frame meshes -> depth, mask, normals, face ids.

Backends: ``"gl"`` (:class:`~diffusion_hpc.render.gl.GLRenderer`, moderngl + headless EGL) and
``"torch"`` (:class:`~diffusion_hpc.render.raster.TorchRenderer`, pure PyTorch). Use
:func:`get_renderer`; heavy dependencies are imported only when a backend is created.
"""

from __future__ import annotations

import logging
import os
import threading

from diffusion_hpc.render.base import RenderOutput
from diffusion_hpc.render.gl import GLRenderer
from diffusion_hpc.render.raster import TorchRenderer

__all__ = ["RenderOutput", "get_renderer", "BACKENDS"]

BACKENDS = ("gl", "torch", "auto")

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_cache: dict[str, object] = {}
_gl_error: Exception | None = None
_cache_pid: int | None = None


def _reset_if_forked() -> None:
    """Drop cached renderers inherited from a parent process (GL contexts do not survive fork)."""
    global _cache_pid, _gl_error
    pid = os.getpid()
    if _cache_pid != pid:
        _cache.clear()
        _gl_error = None
        _cache_pid = pid


def _create_gl():
    """Create (once per process) the GL renderer, or re-raise the cached creation error."""
    global _gl_error
    if "gl" in _cache:
        return _cache["gl"]
    if _gl_error is not None:
        raise RuntimeError(str(_gl_error)) from _gl_error
    try:
        _cache["gl"] = GLRenderer()
    except Exception as exc:
        _gl_error = exc
        raise RuntimeError(str(exc)) from exc
    return _cache["gl"]


def _create_torch():
    """Create (once per process) the PyTorch renderer."""
    if "torch" not in _cache:
        _cache["torch"] = TorchRenderer()
    return _cache["torch"]


def get_renderer(name: str = "auto"):
    """Return the process-wide renderer for a backend.

    Args:
        name: ``"gl"``, ``"torch"`` or ``"auto"`` (GL if its context can be created, else torch;
            one warning is logged when falling back).

    Returns:
        An object with ``render(vertices (B,V,3), faces (F,3), K (B,3,3)|(3,3), size (H,W))
        -> RenderOutput``. The same instance is returned on every call in a process.

    Raises:
        ValueError: unknown ``name``.
        RuntimeError: ``name == "gl"`` and no GL context can be created.
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown renderer {name!r}; valid choices: {', '.join(BACKENDS)}")
    with _lock:
        _reset_if_forked()
        if name == "gl":
            return _create_gl()
        if name == "torch":
            return _create_torch()
        if "auto" in _cache:
            return _cache["auto"]
        try:
            renderer = _create_gl()
            logger.info("renderer 'auto': using the 'gl' backend (headless EGL context created)")
        except RuntimeError as exc:
            renderer = _create_torch()
            logger.warning("renderer 'auto': using the 'torch' backend because the GL backend "
                           "is unavailable: %s", exc)
        _cache["auto"] = renderer
        return renderer
