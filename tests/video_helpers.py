"""Helpers of the video tests: read an output back as a player would, and the tiny model as a pipeline."""

from __future__ import annotations

from pathlib import Path

import av


def read_video(path: Path) -> dict:
    """What a player would see: streams, codecs, frame count and times, size, duration, rotation, colour tags."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        info = {
            "codec": video.codec_context.name, "width": video.codec_context.width,
            "height": video.codec_context.height, "pix_fmt": video.codec_context.pix_fmt,
            "colorspace": video.codec_context.colorspace, "average_rate": video.average_rate,
            "audio": container.streams.audio[0].codec_context.name if container.streams.audio else None,
        }  # fmt: skip
        times, rotation = [], None
        for frame in container.decode(video):
            times.append(float(frame.time))
            rotation = frame.rotation if rotation is None else rotation
        info["times"], info["rotation"], info["frames"] = times, rotation, len(times)
    if info["audio"] is not None:
        with av.open(str(path)) as container:
            audio = container.streams.audio[0]
            samples, first = 0, None
            for frame in container.decode(audio):
                first = frame.time if first is None else first
                samples += frame.samples
            info["audio_seconds"] = samples / audio.codec_context.sample_rate
    return info


def tiny_pipeline(bundle: Path):
    """The tiny reference bundle as a `RestorationPipeline` on the CPU (what `Upscaler.from_weights_dir` builds)."""
    import torch

    from seedvr_local.pipeline import RestorationPipeline
    from seedvr_local.weights.bundle import load_models

    models = load_models(bundle, device=torch.device("cpu"), dtype=torch.float32)
    info = models.weights_dir
    return RestorationPipeline(
        models.dit, models.vae, models.pos_emb, scaling_factor=info.scaling_factor, shifting_factor=info.shifting_factor
    )
