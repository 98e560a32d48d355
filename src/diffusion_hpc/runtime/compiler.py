"""The C++ compiler ``torch.compile`` needs at run time.

``torch.compile``'s CPU backend (inductor) writes C++ and builds it with the compiler it finds
(``g++`` on Linux, or ``CXX``); without one the first compiled call fails deep inside torch, after
the run's work began. :func:`require_cpp_compiler` asks inductor's own search before any work.
"""

from __future__ import annotations

from diffusion_hpc.errors import ConfigError


def find_cpp_compiler() -> str | None:
    """The C++ compiler ``torch.compile`` (inductor) would build with, or None when there is none."""
    from torch._inductor import cpp_builder, exc

    try:
        return cpp_builder.get_cpp_compiler()
    except exc.InvalidCxxCompiler:
        return None


def require_cpp_compiler(option: str) -> str:
    """The compiler :func:`find_cpp_compiler` finds.

    Raises:
        ConfigError: there is none; the message names ``option`` (what asked for compilation) and the fix.
    """
    compiler = find_cpp_compiler()
    if compiler is None:
        raise ConfigError(f"{option} compiles with torch.compile, which needs a C++ compiler at run time (g++ or "
                          "clang++ on PATH, or the CXX environment variable); none was found: install one, or leave "
                          f"{option} out")
    return compiler
