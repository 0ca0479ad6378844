"""Development tools for the synthetic corpus.

``python -m conclugen.devtools.synthetic_tools face-rate DIR [--clips N] [--every K]``: the share
of decoded frames in which :class:`~conclugen.data.faces.FaceDetector` finds a face, to check
that drawing changes keep the faces detectable.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from conclugen.data.faces import FaceDetector


def face_detection_rate(
    root: str, max_clips: int = 50, every: int = 1, detector: FaceDetector | None = None
) -> tuple[int, int]:
    """(frames with a face, frames checked) over the first ``max_clips`` clips (sorted paths) of a
    local synthetic corpus, checking every ``every``-th decoded frame with :class:`FaceDetector`."""
    import av

    det = detector or FaceDetector()
    paths = sorted(Path(root).rglob("*.mp4"))[:max_clips]
    hit = total = 0
    for path in paths:
        with av.open(str(path)) as c:
            for i, fr in enumerate(c.decode(video=0)):
                if i % every:
                    continue
                total += 1
                hit += bool(det.detect(fr.to_ndarray(format="rgb24")))
    return hit, total


def main(argv: list[str] | None = None) -> int:
    """The command line (see the module docstring); 1 when there is no frame to check."""
    ap = argparse.ArgumentParser(prog="python -m conclugen.devtools.synthetic_tools")
    sub = ap.add_subparsers(dest="cmd", required=True)
    fr = sub.add_parser("face-rate", help="face detection rate over a local synthetic corpus")
    fr.add_argument("root")
    fr.add_argument("--clips", type=int, default=50)
    fr.add_argument("--every", type=int, default=1, help="check every K-th frame (25 = 1 fps)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    hit, total = face_detection_rate(args.root, args.clips, args.every)
    if total == 0:
        print(f"no mp4 frames under {args.root}")
        return 1
    n = min(args.clips, len(list(Path(args.root).rglob("*.mp4"))))
    print(
        f"faces found in {hit}/{total} frames = {hit / total:.1%} ({n} clips, every {args.every} frame(s), "
        f"{time.perf_counter() - t0:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
