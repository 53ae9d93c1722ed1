import pytest

from seedvr_local.sizes import SizeError, output_size


@pytest.mark.parametrize(
    "size, factor, expected",
    [
        ((50, 37), 2.0, (100, 74)),
        ((51, 37), 1.5, (76, 56)),  # 76.5 -> 76 and 55.5 -> 56: half to even
        ((33, 17), 3.0, (99, 51)),
        ((640, 480), 1.0, (640, 480)),
        ((1, 1), 10.0, (10, 10)),
    ],
)
def test_factor_mode_multiplies_and_rounds(size, factor, expected):
    assert output_size(*size, "factor", factor, "1080p") == expected


@pytest.mark.parametrize(
    "size, target, expected",
    [
        ((640, 480), "1080p", (1440, 1080)),  # landscape: height is the short side
        ((480, 640), "1080p", (1080, 1440)),  # portrait: width is the short side
        ((500, 500), "720p", (720, 720)),
        ((1001, 333), "2160p", (6493, 2160)),  # 1001 * 2160 / 333 = 6492.97
        ((3000, 2000), "1440p", (2160, 1440)),  # target mode also downscales
    ],
)
def test_target_mode_sets_the_short_side(size, target, expected):
    assert output_size(*size, "target", 2.0, target) == expected


@pytest.mark.parametrize(
    "args, message",
    [
        (((10, 10), "factor", 0.5, "1080p"), "upscale_factor"),
        (((10, 10), "factor", 11.0, "1080p"), "upscale_factor"),
        (((10, 10), "target", 2.0, "4k"), "target_resolution"),
        (((10, 10), "zoom", 2.0, "1080p"), "upscale_mode"),
        (((0, 10), "factor", 2.0, "1080p"), "no pixels"),
    ],
)
def test_invalid_options_are_refused(args, message):
    (w, h), *rest = args
    with pytest.raises(SizeError, match=message):
        output_size(w, h, *rest)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(upscale_factor=0.5), "upscale_factor"),
        (dict(upscale_mode="target", target_resolution="4k"), "target_resolution"),
        (dict(upscale_mode="zoom"), "upscale_mode"),
        (dict(noise_scale=1.5), "noise_scale"),
        (dict(seed=2**31), "seed"),
        (dict(color_fix="sepia"), "color_fix"),
        (dict(vae_tile=4), "vae_tile"),
        (dict(vae_tile=True), "vae_tile"),
    ],
)
def test_options_validate_on_their_own(options, message, monkeypatch):
    """`UpscaleOptions.validate` checks the size fields themselves, without sizing a dummy image."""
    from seedvr_local import options as options_module
    from seedvr_local.options import UpscaleOptions

    monkeypatch.setattr(options_module, "output_size", None)  # validate must not need it
    with pytest.raises(ValueError, match=message):
        UpscaleOptions(**options).validate()
    UpscaleOptions(upscale_mode="target", upscale_factor=0, target_resolution="720p", vae_tile=8).validate()


def test_choices_are_written_once():
    """The CLI's flags, the server's schema and the colour-fix code offer exactly the options module's choices."""
    import typing

    from seedvr_local.cli import build_parser
    from seedvr_local.cli_video import VIDEO_FORMAT_NAMES
    from seedvr_local.colorfix import COLOR_FIX_METHODS
    from seedvr_local.options import COLOR_FIXES, OUTPUT_FORMATS
    from seedvr_local.server.schema import SeedVRImageInput
    from seedvr_local.sizes import TARGET_SHORT_SIDE

    upscale = build_parser()._subparsers._group_actions[0].choices["upscale"]
    flags = {action.dest: action.choices for action in upscale._actions}
    assert tuple(flags["color_fix"]) == COLOR_FIXES == COLOR_FIX_METHODS
    assert tuple(flags["output_format"]) == OUTPUT_FORMATS + VIDEO_FORMAT_NAMES
    assert tuple(flags["target_resolution"]) == tuple(TARGET_SHORT_SIDE)
    fields = SeedVRImageInput.model_fields
    assert typing.get_args(fields["output_format"].annotation) == OUTPUT_FORMATS
    assert typing.get_args(fields["target_resolution"].annotation) == tuple(TARGET_SHORT_SIDE)
