"""Write the entropy model's training and validation clips for the low-rate bench (bench/rd/entropy_f16.yaml).

    PYTHONPATH=$PWD/src python bench/rd/write_entropy_clips.py --out runs/rd_clips

train/: the rd bench's training clips (vqforge.data.test_clips.TRAIN_CLIPS, 32 frames) plus every motion of
        vqforge.data.synthetic_clips over the ten training sample photos, with cuts (16 frames each): the held-out
        photos coffee and chelsea never appear;
val/:   the held-out clips the rd table is measured on (HELD_OUT_CLIPS, 32 frames).
All 256x256 and lossless (H.264 RGB, CRF 0: the decoded pixels are exactly the rendered ones, checked here), so the
tokens the entropy model trains on are the tokens `vqforge rd` codes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import av
import numpy as np

from vqforge.data.samples import SAMPLE_PHOTOS_TRAIN
from vqforge.data.synthetic_clips import clip_set
from vqforge.data.synthetic_clips import render_clip as render_spec
from vqforge.data.test_clips import HELD_OUT_CLIPS, TRAIN_CLIPS, render_clip


def write_lossless(path: Path, frames: np.ndarray, fps: int = 25) -> None:
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264rgb", rate=fps)
        s.height, s.width = frames.shape[1:3]
        s.pix_fmt = "rgb24"
        s.options = {"crf": "0", "preset": "veryfast"}
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    with av.open(str(path)) as c:
        back = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    if not np.array_equal(back, frames):
        raise RuntimeError(f"{path}: the decoded frames differ from the rendered ones")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/rd_clips")
    ap.add_argument("--size", type=int, default=256)
    a = ap.parse_args()
    out = Path(a.out)
    (out / "train").mkdir(parents=True, exist_ok=True)
    (out / "val").mkdir(parents=True, exist_ok=True)
    for n in TRAIN_CLIPS:
        write_lossless(out / "train" / f"{n}.mp4", render_clip(n, 32, a.size))
    for s in clip_set(list(SAMPLE_PHOTOS_TRAIN), frames=16, size=a.size, cuts=True):
        name = f"syn_{s.photo}_{s.kind}" + (f"_cut_{s.cut_to}" if s.cut_to else "")
        write_lossless(out / "train" / f"{name}.mp4", render_spec(s))
    for n in HELD_OUT_CLIPS:
        write_lossless(out / "val" / f"{n}.mp4", render_clip(n, 32, a.size))
    print(f"{len(list((out / 'train').iterdir()))} training clips, {len(HELD_OUT_CLIPS)} held-out clips in {out}")


if __name__ == "__main__":
    main()
