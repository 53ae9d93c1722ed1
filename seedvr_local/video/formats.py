"""The output formats of fal's `fal-ai/seedvr/upscale/video` and what each quality and write mode means to
its encoder. Everything about a format is written here once; `writer.py` only applies it.

Quality (`output_quality`) picks how much detail the encoder keeps (x264 and VP9: constant-quality CRF, lower
is better; ProRes: the quantisation matrix and profile; GIF: palette size), write mode (`output_write_mode`)
the speed/size trade-off (x264: preset; VP9: `cpu-used`; GIF: dithering; ProRes has no such knob).
"""

from __future__ import annotations

from dataclasses import dataclass, field

OUTPUT_QUALITIES = ("low", "medium", "high", "maximum")
OUTPUT_WRITE_MODES = ("fast", "balanced", "small")
DEFAULT_QUALITY = "high"
DEFAULT_WRITE_MODE = "balanced"

Settings = dict[str, str]


@dataclass(frozen=True)
class OutputFormat:
    fal_name: str  # fal's enum string, spaces and parentheses included
    name: str  # the short name: the file extension
    container: str  # FFmpeg muxer
    codec: str  # FFmpeg encoder
    content_type: str
    pixel_format: str
    alpha_pixel_format: str | None  # used when the input has alpha; None: the format drops alpha
    size_multiple: int  # 4:2:0 chroma needs even sizes: the frame is padded (never cropped) up to a multiple
    audio_copy: frozenset[str]  # source audio codecs this container takes as they are
    audio_encoder: str | None  # for any other audio; None: the format has no audio
    quality: dict[str, Settings]  # per OUTPUT_QUALITIES
    write_mode: dict[str, Settings] = field(default_factory=lambda: {mode: {} for mode in OUTPUT_WRITE_MODES})
    container_options: Settings = field(default_factory=dict)

    @property
    def extension(self) -> str:
        return "." + self.name

    def encoder_settings(self, quality: str, write_mode: str) -> Settings:
        """The encoder options (for GIF: the palettegen/paletteuse options) for this quality and write mode."""
        check_choice("output_quality", quality, OUTPUT_QUALITIES)
        check_choice("output_write_mode", write_mode, OUTPUT_WRITE_MODES)
        return {**self.quality[quality], **self.write_mode[write_mode]}


# The MP4 and MOV muxers move the index to the front when the file is complete, so a browser can start playing
# the file before it has all of it.
_FASTSTART = {"movflags": "+faststart"}

OUTPUT_FORMATS = (
    OutputFormat(
        fal_name="X264 (.mp4)", name="mp4", container="mp4", codec="libx264", content_type="video/mp4",
        pixel_format="yuv420p", alpha_pixel_format=None, size_multiple=2,
        audio_copy=frozenset({"aac", "mp3", "alac", "ac3", "eac3", "opus", "flac"}), audio_encoder="aac",
        quality={"low": {"crf": "28"}, "medium": {"crf": "23"}, "high": {"crf": "18"}, "maximum": {"crf": "12"}},
        write_mode={"fast": {"preset": "veryfast"}, "balanced": {"preset": "medium"}, "small": {"preset": "slower"}},
        container_options=_FASTSTART,
    ),
    OutputFormat(
        fal_name="VP9 (.webm)", name="webm", container="webm", codec="libvpx-vp9", content_type="video/webm",
        pixel_format="yuv420p", alpha_pixel_format=None, size_multiple=2,
        audio_copy=frozenset({"opus", "vorbis"}), audio_encoder="libopus",
        # b=0 makes CRF a constant quality rather than a cap on a target bitrate
        quality={
            "low": {"crf": "42", "b": "0"}, "medium": {"crf": "36", "b": "0"},
            "high": {"crf": "30", "b": "0"}, "maximum": {"crf": "15", "b": "0"},
        },
        write_mode={
            "fast": {"deadline": "good", "cpu-used": "5", "row-mt": "1"},
            "balanced": {"deadline": "good", "cpu-used": "2", "row-mt": "1"},
            "small": {"deadline": "good", "cpu-used": "0", "row-mt": "1"},
        },
    ),
    OutputFormat(
        fal_name="PRORES4444 (.mov)", name="mov", container="mov", codec="prores_ks", content_type="video/quicktime",
        pixel_format="yuv444p10le", alpha_pixel_format="yuva444p10le", size_multiple=2,
        audio_copy=frozenset({"aac", "alac", "mp3", "ac3", "pcm_s16le", "pcm_s24le"}), audio_encoder="aac",
        quality={
            "low": {"profile": "4444", "quant_mat": "lt"}, "medium": {"profile": "4444", "quant_mat": "standard"},
            "high": {"profile": "4444", "quant_mat": "hq"}, "maximum": {"profile": "4444xq", "quant_mat": "hq"},
        },
        container_options=_FASTSTART,
    ),
    OutputFormat(
        fal_name="GIF (.gif)", name="gif", container="gif", codec="gif", content_type="image/gif",
        pixel_format="pal8", alpha_pixel_format=None, size_multiple=1,
        audio_copy=frozenset(), audio_encoder=None,
        quality={
            "low": {"max_colors": "32"}, "medium": {"max_colors": "64"},
            "high": {"max_colors": "128"}, "maximum": {"max_colors": "256"},
        },
        write_mode={"fast": {"dither": "bayer"}, "balanced": {"dither": "sierra2_4a"}, "small": {"dither": "none"}},
    ),
)
DEFAULT_FORMAT = OUTPUT_FORMATS[0]


def check_choice(option: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{option} must be one of {', '.join(choices)}, got {value!r}")


def output_format(name: str) -> OutputFormat:
    """The format for fal's string ("X264 (.mp4)") or its short name ("mp4")."""
    for fmt in OUTPUT_FORMATS:
        if name in (fmt.fal_name, fmt.name):
            return fmt
    choices = ", ".join(f"{fmt.fal_name!r} ({fmt.name})" for fmt in OUTPUT_FORMATS)
    raise ValueError(f"output_format must be one of {choices}, got {name!r}")
