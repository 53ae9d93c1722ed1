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
