"""The leading frames of a trajectory that no protocol A, B or C evaluation window touches.

Protocols A and B draw their starts from [margin : −margin] and C holds out the last 40 % chronologically,
so frames [0, margin − history span) are never inside an A/B window (of any split) nor a C val/test window.
Training on them leaves every reported number free of overlap with the training frames.

Write them to a training file with ``python tools/holdout.py``.
"""

from __future__ import annotations

from .protocols import (A_DELTA_T_FRAMES, A_MARGIN_FRAMES, B_STRIDE_FRAMES, C_STRIDE_FRAMES, chronological_bounds,
                        protocol_a_stride, random_start_plan, to_file_frames)


def clean_prefix_frames(n_frames: int, frame_fs: float, history_frames: int, a_history_stride_frames: int) -> int:
    """Number of leading frames outside every A/B window and every C val/test window."""
    a_stride = protocol_a_stride(a_history_stride_frames, frame_fs)
    b_stride = to_file_frames(B_STRIDE_FRAMES, frame_fs, "protocol B's stride")
    plan = random_start_plan(n_frames, before_frames=(history_frames - 1) * max(a_stride, b_stride),
                             after_frames=to_file_frames(A_DELTA_T_FRAMES, frame_fs, "protocol A's ΔT"),
                             margin_frames=to_file_frames(A_MARGIN_FRAMES, frame_fs, "protocol A's margin"))
    first_ab_frame = plan.margin_frames - (history_frames - 1) * max(a_stride, b_stride)
    c_stride = to_file_frames(C_STRIDE_FRAMES, frame_fs, "protocol C's downsampling")
    first_c_heldout = chronological_bounds((n_frames - 1) // c_stride + 1)["val"][0] * c_stride
    return max(0, min(first_ab_frame, first_c_heldout))
