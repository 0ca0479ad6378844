"""The synthetic corpus's development CLI: face detection rate over a corpus folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from conclugen.data.synthetic import synthesize
from conclugen.devtools.synthetic_tools import face_detection_rate, main


def test_face_rate_reports_the_share_of_frames_with_a_face(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    synthesize(str(tmp_path), clips=1, seed=5, workers=1, voice="numpy")
    hit, total = face_detection_rate(str(tmp_path), every=25)
    assert total >= 2 and 0 <= hit <= total
    assert main(["face-rate", str(tmp_path), "--every", "25"]) == 0
    assert f"faces found in {hit}/{total} frames" in capsys.readouterr().out


def test_face_rate_without_clips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["face-rate", str(tmp_path)]) == 1
    assert "no mp4 frames" in capsys.readouterr().out
