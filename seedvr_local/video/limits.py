"""Default limits of a video job, without torch or PyAV: the CLI's and the server's flags read them from here."""

#: The longest video accepted by default (vLLM-Omni's long-video route takes 7,200 frames).
DEFAULT_MAX_FRAMES = 7200


def check_clip_frames(clip_frames: int) -> None:
    """Clips are 4n+1 frames (the causal VAE turns 4n+1 frames into n+1 latent frames); ValueError otherwise."""
    if clip_frames < 1 or (clip_frames - 1) % 4:
        raise ValueError(f"clip_frames must be 4n+1 (1, 5, 9, 13, ...), got {clip_frames}")
