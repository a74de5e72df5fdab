"""Optical flow (methods/video/flow.py): a picture carried along it, and in-between frames made
along it, against a ball whose true places are known."""

from __future__ import annotations

from reverie.methods.video.flow import backward_flow, carried, inbetweens
from reverie.methods.video.motion import blend
from reverie.outputs.video import video_info
from test_video import TINY, frame_difference
from test_video_restyle import ball_at

SIZE = (96, 64)


def test_a_picture_carried_along_the_flow_lands_where_the_ball_went():
    before, after = ball_at(20, SIZE), ball_at(28, SIZE)
    moved = carried(before, backward_flow(before, after, "dis"))
    assert frame_difference(moved, after) < 0.1 * frame_difference(before, after)


def test_a_flow_inbetween_puts_the_ball_halfway_where_a_blend_shows_it_twice():
    first, second = ball_at(20, SIZE), ball_at(32, SIZE)
    quarter, middle = inbetweens(first, second, [0.25, 0.5])
    assert frame_difference(middle, ball_at(26, SIZE)) < 0.2 * frame_difference(blend(first, second, 0.5), ball_at(26, SIZE))
    assert frame_difference(quarter, ball_at(23, SIZE)) < 0.2 * frame_difference(quarter, ball_at(29, SIZE))


def test_a_video_with_flow_inbetweens_writes_them_between_its_frames(studio, tmp_path):
    result = studio.video("walk", ["a castle", "a boat"], seed=3, frames=2, interpolate=2, interpolation="flow",
                          outdir=tmp_path, **TINY)
    assert video_info(result.videos[0]).frames == 4
