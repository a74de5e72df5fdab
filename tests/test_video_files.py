"""Video files (MP4, GIF, WebP: written whole with their settings, read back) and the camera moves,
warps and colour coherence that animated videos are made with."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from reverie.errors import BadRequest
from reverie.methods.video.motion import (BORDERS, _rgb_to_lab, blend, camera_matrix, compose, invert, is_identity,
                                          match_colours, warp)
from reverie.outputs.video import (VIDEO_FORMATS, VideoWriter, check_video_path, read_frames, video_info,
                                   write_video)

from conftest import pixels

SETTINGS = {"prompt": "a forest = a city; #1 \\ more\nsecond line, é", "frames": 12, "zoom": "0:(1.02)"}


def coloured_frames(count: int, size: tuple[int, int] = (40, 30)) -> list[Image.Image]:
    """Flat frames, each its own grey-blue level, so frames never merge and can be told apart."""
    return [Image.new("RGB", size, (20 * n, 10 + 10 * n, 200 - 10 * n)) for n in range(count)]


# -- video files --------------------------------------------------------------------------------
@pytest.mark.parametrize("format", VIDEO_FORMATS)
def test_a_video_reads_back_with_its_frames_rate_size_and_settings(tmp_path, format):
    frames = coloured_frames(12)
    path = write_video(frames, tmp_path / f"walk.{format}", fps=12, metadata=SETTINGS)
    info = video_info(path)
    assert (info.frames, info.width, info.height) == (12, 40, 30)
    assert info.fps == pytest.approx(12, abs=0.01)
    assert info.metadata == SETTINGS
    back = read_frames(path)
    assert len(back) == 12 and back[0].size == (40, 30)
    for made, read in zip(frames, back):
        assert np.abs(pixels(read).mean(axis=(0, 1)) - pixels(made).mean(axis=(0, 1))).max() < 4
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"walk.{format}"]  # no temporary file left


@pytest.mark.parametrize("format", ["gif", "webp"])
def test_a_gif_or_webp_keeps_the_running_time_when_a_frame_is_not_whole_milliseconds(tmp_path, format):
    path = write_video(coloured_frames(7), tmp_path / f"v.{format}", fps=7.5)
    assert video_info(path).fps == pytest.approx(7.5, rel=0.01)


def test_without_settings_a_video_has_no_metadata(tmp_path):
    assert video_info(write_video(coloured_frames(2), tmp_path / "v.mp4")).metadata is None


def test_an_odd_size_is_kept_in_a_gif_and_webp_and_padded_by_its_edge_in_an_mp4(tmp_path):
    frame = Image.fromarray(np.random.default_rng(0).integers(0, 256, (27, 41, 3), dtype=np.uint8))
    frame.paste((250, 250, 250), (36, 0, 41, 27))  # a light band at the right edge
    for format in ("gif", "webp"):
        info = video_info(write_video([frame, frame.rotate(180)], tmp_path / f"v.{format}", fps=5))
        assert (info.frames, info.width, info.height) == (2, 41, 27)
    path = write_video([frame, frame.rotate(180)], tmp_path / "v.mp4", fps=5)
    info = video_info(path)
    assert (info.frames, info.width, info.height) == (2, 42, 28)
    first = pixels(read_frames(path)[0])
    assert first[:, 41].mean() > 200  # the repeated light edge, not a black line


@pytest.mark.parametrize("format", VIDEO_FORMATS)
def test_a_failure_inside_the_writer_leaves_no_file_and_the_old_one_untouched(tmp_path, format):
    path = tmp_path / f"new.{format}"
    with pytest.raises(RuntimeError, match="stopped"):
        with VideoWriter(path, fps=12, metadata=SETTINGS) as video:
            for frame in coloured_frames(5):
                video.add(frame)
            raise RuntimeError("stopped")
    assert list(tmp_path.iterdir()) == []
    old = write_video(coloured_frames(2), tmp_path / f"old.{format}")
    before = old.read_bytes()
    with pytest.raises(BadRequest, match="all have one size"):
        write_video(coloured_frames(3) + coloured_frames(1, (20, 20)), old)
    assert old.read_bytes() == before and list(tmp_path.iterdir()) == [old]


def test_a_video_without_frames_is_refused_and_nothing_is_written(tmp_path):
    with pytest.raises(BadRequest, match="no pictures"):
        write_video([], tmp_path / "v.mp4")
    with pytest.raises(BadRequest, match="no pictures"):
        with VideoWriter(tmp_path / "v.gif", fps=12):
            pass
    assert list(tmp_path.iterdir()) == []


def test_video_paths_and_rates_are_checked():
    assert check_video_path("dream.webp").suffix == ".webp"
    with pytest.raises(BadRequest, match=r"video: out.avi: .*\.mp4, \.gif or \.webp"):
        check_video_path("out.avi")
    with pytest.raises(BadRequest, match="fps"):
        VideoWriter("v.mp4", fps=0)


def test_write_video_takes_picture_files(tmp_path):
    files = []
    for n, frame in enumerate(coloured_frames(3)):
        files.append(tmp_path / f"{n}.png")
        frame.save(files[-1])
    assert video_info(write_video(files, tmp_path / "v.gif", fps=10)).frames == 3


# -- camera moves -------------------------------------------------------------------------------
SIZE = 96  # a square picture, centre (48, 48) in pixel coordinates (pixel i's centre is i + 0.5)


def marker_at(x: int, y: int) -> Image.Image:
    """Black with a 3x3 white marker centred on pixel (x, y)."""
    levels = np.zeros((SIZE, SIZE, 3), np.uint8)
    levels[y - 1:y + 2, x - 1:x + 2] = 255
    return Image.fromarray(levels)


def centre_of(picture: Image.Image) -> np.ndarray:
    """The marker's centre of brightness in pixel coordinates (x, y)."""
    weight = pixels(picture)[..., 0].astype(np.float64)
    ys, xs = np.indices(weight.shape) + 0.5
    return np.array([(weight * xs).sum(), (weight * ys).sum()]) / weight.sum()


def moved(x: int, y: int, **move) -> np.ndarray:
    return centre_of(warp(marker_at(x, y), camera_matrix((SIZE, SIZE), **move), border="replicate"))


def test_no_move_is_the_identity_and_warps_to_an_exact_copy():
    assert np.array_equal(camera_matrix((SIZE, 64)), np.eye(3))
    assert is_identity(camera_matrix((SIZE, 64))) and not is_identity(camera_matrix((SIZE, 64), zoom=1.01))
    picture = Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, SIZE, 3), dtype=np.uint8))
    assert np.array_equal(pixels(warp(picture, np.eye(3))), pixels(picture))


def test_zooming_in_moves_a_marker_away_from_the_centre_by_the_zoom():
    centre = np.array([SIZE / 2, SIZE / 2])
    offset = np.array([60.5, 40.5]) - centre
    assert moved(60, 40, zoom=1.5) == pytest.approx(centre + 1.5 * offset, abs=0.1)
    assert moved(60, 40, zoom=0.5) == pytest.approx(centre + 0.5 * offset, abs=0.1)


def test_a_positive_angle_turns_a_marker_counter_clockwise():
    # The marker's centre is (64.5, 48.5): 16.5 px right of the picture's centre (48, 48) and
    # 0.5 px below it. A quarter turn counter-clockwise on screen takes right to up, and down to right.
    assert moved(64, 48, angle=90) == pytest.approx([48 + 0.5, 48 - 16.5], abs=0.1)
    assert moved(64, 48, angle=-90) == pytest.approx([48 - 0.5, 48 + 16.5], abs=0.1)
    assert moved(64, 48, angle=180) == pytest.approx([48 - 16.5, 48 - 0.5], abs=0.1)


def test_translation_moves_a_marker_right_and_down_by_whole_pixels():
    picture = marker_at(30, 40)
    shifted = warp(picture, camera_matrix((SIZE, SIZE), translation_x=5, translation_y=3))
    assert np.array_equal(pixels(shifted)[3:, 5:], pixels(picture)[:-3, :-5])
    assert moved(30, 40, translation_x=-7) == pytest.approx([30.5 - 7, 40.5], abs=1e-3)


def test_compose_does_the_moves_in_order_and_a_move_then_its_inverse_is_nothing():
    size = (SIZE, 64)
    moves = [camera_matrix(size, 1.3, 25, 4, -2), camera_matrix(size, 0.8, -70), camera_matrix(size, 1, 0, 9, 1.5)]
    for move in moves:
        assert is_identity(compose(move, invert(move))) and is_identity(compose(invert(move), move))
    assert is_identity(compose())
    # zoom 2 about the centre, then 10 px right: the content point at centre + (5, 0) ends at centre + (20, 0)
    zoom_then_shift = compose(camera_matrix(size, zoom=2), camera_matrix(size, translation_x=10))
    forward = invert(zoom_then_shift) @ np.array([SIZE / 2 + 5, 32, 1])
    assert forward[:2] == pytest.approx([SIZE / 2 + 20, 32])
    assert compose(camera_matrix(size, angle=30), camera_matrix(size, angle=60)) == pytest.approx(
        camera_matrix(size, angle=90))


@pytest.mark.parametrize("border", BORDERS)
def test_every_border_fills_the_corners_a_move_brings_in(border):
    texture = np.random.default_rng(2).integers(110, 190, (64, SIZE, 3), dtype=np.uint8)
    warped = pixels(warp(Image.fromarray(texture), camera_matrix((SIZE, 64), zoom=0.6, angle=30), border))
    for corner in (warped[:6, :6], warped[:6, -6:], warped[-6:, :6], warped[-6:, -6:]):
        assert corner.min() > 60  # never black


def test_the_borders_read_mirrored_stretched_and_wrapped_edges():
    texture = np.random.default_rng(3).integers(0, 256, (64, SIZE, 3), dtype=np.uint8)
    picture, right = Image.fromarray(texture), camera_matrix((SIZE, 64), translation_x=3)
    assert np.array_equal(pixels(warp(picture, right, "wrap")), np.roll(texture, 3, axis=1))
    assert np.array_equal(pixels(warp(picture, right, "replicate"))[:, :3], np.repeat(texture[:, :1], 3, axis=1))
    assert np.array_equal(pixels(warp(picture, right, "reflect"))[:, :3], texture[:, 2::-1])
    with pytest.raises(BadRequest, match="border"):
        warp(picture, right, "mirror")


# -- colour coherence and blending ------------------------------------------------------------
def landscape(seed: int = 4) -> Image.Image:
    """A smooth picture with texture: sky-blue above, green below, noise over both."""
    rng = np.random.default_rng(seed)
    rows = np.linspace(0, 1, 64)[:, None, None]
    levels = (1 - rows) * np.array([90, 150, 230]) + rows * np.array([60, 140, 50])
    levels = levels + rng.normal(0, 18, (64, SIZE, 3))
    return Image.fromarray(np.clip(levels, 0, 255).astype(np.uint8))


def test_matching_a_picture_to_itself_leaves_it_unchanged():
    picture = landscape()
    assert np.array_equal(pixels(match_colours(picture, picture, "rgb")), pixels(picture))
    for space in ("hsv", "lab"):
        assert np.abs(pixels(match_colours(picture, picture, space)) - pixels(picture)).max() <= 1


@pytest.mark.parametrize("space", ["rgb", "lab", "hsv"])
def test_matching_brings_a_reddened_picture_back_to_the_references_colours(space):
    reference = landscape(5)
    levels = pixels(landscape(6)).astype(np.float64) * [0.6, 0.9, 0.7] + [100, 0, 0]
    reddened = Image.fromarray(np.clip(levels, 0, 255).astype(np.uint8))
    matched = match_colours(reddened, reference.resize((48, 32)), space)
    assert matched.size == reddened.size
    target = pixels(reference).mean(axis=(0, 1))
    assert np.abs(pixels(reddened).mean(axis=(0, 1)) - target).max() > 60
    # Each channel is matched in its own space, so there its means meet the reference's; back in
    # RGB they land within a few levels (lab and hsv match each channel alone, not the colours' mix).
    assert np.abs(pixels(matched).mean(axis=(0, 1)) - target).max() < {"rgb": 1, "lab": 10, "hsv": 6}[space]
    if space == "lab":
        lab_means = [_rgb_to_lab(pixels(picture) / 255).mean(axis=(0, 1)) for picture in (matched, reference)]
        assert lab_means[0] == pytest.approx(lab_means[1], abs=0.5)


def test_an_unknown_colour_space_is_refused():
    with pytest.raises(BadRequest, match="colour_coherence"):
        match_colours(landscape(), landscape(), "cmyk")


def test_blend_fades_between_two_frames_and_rounds():
    a, b = Image.new("RGB", (4, 4), (0, 100, 255)), Image.new("RGB", (4, 4), (255, 101, 0))
    assert pixels(blend(a, b, 0)).tolist() == pixels(a).tolist()
    assert pixels(blend(a, b, 1)).tolist() == pixels(b).tolist()
    assert pixels(blend(a, b, 0.5))[0, 0].tolist() == [128, 101, 128]  # 127.5 and 100.5 round up
    assert pixels(blend(a, b, 0.25))[0, 0].tolist() == [64, 100, 191]
