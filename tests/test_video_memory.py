"""Peak memory of a video job does not grow with the video's length.

Each run is a fresh subprocess (peak RSS is per process). The model is a stand-in that returns its input:
the pipeline itself only ever sees one clip, so what could grow with the length is the restorer's own
buffering, decoding and encoding. The frame size makes growth visible: keeping every restored 128x128 frame
of a 400-frame video would add 360 x 196 kB = 70 MB, far more than the 10% allowed.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from seedvr_local.video.samples import make_video

_RUN = textwrap.dedent(
    """
    import resource, sys
    from types import SimpleNamespace
    import torch
    from seedvr_local.preprocess import crop_to
    from seedvr_local.video import VideoOptions, VideoRestorer

    class IdentityPipeline:
        device = torch.device("cpu")
        size_multiple = 16

        def latent_shape(self, frames, height, width):
            return (1, 1, 1, 1)

        def restore(self, video, noises, cond_noise_scale, color_fix, on_phase, crop, vae_tiling):
            return SimpleNamespace(colorfixed=crop_to(video, crop).clone())

    options = VideoOptions(upscale_factor=2, seed=0, clip_frames=21, output_write_mode="fast")
    result = VideoRestorer(IdentityPipeline()).restore(sys.argv[1], sys.argv[2], options)
    assert result.frames == int(sys.argv[3])
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    """
)


def _peak_rss_kib(tmp_path, frames: int) -> int:
    source = make_video(tmp_path / f"in{frames}.mp4", 64, 64, frames=frames, fps=24)
    output = tmp_path / f"out{frames}.mp4"
    run = subprocess.run([sys.executable, "-c", _RUN, str(source), str(output), str(frames)],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return int(run.stdout.split()[-1])


def test_peak_memory_does_not_depend_on_the_length(tmp_path):
    short, long = _peak_rss_kib(tmp_path, 40), _peak_rss_kib(tmp_path, 400)
    assert abs(long - short) <= 0.10 * short, (short, long)
