"""Body poses: the packaged CMU motion-capture set, pose files and BVH import.

``import diffusion_hpc.poses`` is light (numpy only); retargeting and BVH parsing are imported when used.

The data used in this project was obtained from mocap.cs.cmu.edu. The database was created with
funding from NSF EIA-0196217.
"""

from __future__ import annotations

from diffusion_hpc.poses.io import (
    BUILTIN_SETS,
    PoseSet,
    builtin_poses,
    import_bvh,
    load_pose_file,
    load_pose_set,
    save_pose_file,
)

__all__ = ["BUILTIN_SETS", "PoseSet", "load_pose_file", "load_pose_set", "save_pose_file", "builtin_poses", "import_bvh"]
