"""Default limits of a video job, without torch or PyAV: the CLI's and the server's flags read them from here."""

#: The longest video accepted by default (vLLM-Omni's long-video route takes 7,200 frames).
DEFAULT_MAX_FRAMES = 7200
