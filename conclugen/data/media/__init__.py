"""Clip decoding with PyAV: face frames for the 2D model, frame windows for the 3D model, 16 kHz
mono audio, and the log-mel spectrogram the audio models take.

Modules: :mod:`.decode` (:func:`decode_clip`, :class:`DecodedClip`), :mod:`.sampling` (the
clip's time line and timestamp targets), :mod:`.crops` (face/window crops from YUV planes),
:mod:`.audio` (the audio track), :mod:`.integrity` (:class:`MediaError`, cut/damage evidence),
:mod:`.mel` (:func:`log_mel`) and :mod:`.encode` (:func:`encode_clip`, for tests and benchmarks).

Decisions:

* **Bytes in.** Clips come from object storage, so :func:`decode_clip` reads ``bytes`` through
  ``io.BytesIO``; nothing touches the local disk.
* **Sampling by timestamps, not frame index.** A target time ``t`` takes the frame that is on
  screen at ``t`` (the last frame with ``pts <= t``). Face frames are taken at
  ``start + k / face_fps`` and window frames at ``start + k / window_fps`` for every such time
  before the clip's end, so a clip of duration ``d`` gives ``ceil(d * face_fps)`` face frames and
  ``ceil(d * window_fps)`` window frames whatever its own frame rate (29.97, 7, variable, ...).
  A source slower than ``window_fps`` repeats frames; a faster one skips them.
* **Clip time line.** The clip starts at ``max(start_s, first frame)`` (first frame for a whole
  file) and ends at the earliest of ``end_s``, ``start + max_seconds`` and the end of the last
  frame (its pts plus its duration). A 1-frame clip therefore lasts one frame period and gives one
  face frame and one (padded) window. An ``end_s`` past the video's end ends at its last frame.
* **Windows.** ``window_frames`` consecutive window frames, stride ``window_frames``; the last
  window is padded by repeating its last real frame. Windows are cut from real frames only, so no
  window is ever padding only (the reference drops such windows; here they cannot arise).
* **Face crop for windows too.** Each window frame is cropped around the face box found on the
  latest 1-fps face frame at or before it (centre crop when none), so the 3D model sees the face
  as the 2D model does, with detection run only at ``face_fps``.
* **Cheap crops.** For yuv420p video crops are cut from the decoder's planes before the colour
  conversion (see :mod:`.crops`). Frames that no target falls on are decoded but never converted.
* **Seek and stop early.** For a segment starting after 0.5 s the demuxer seeks to the keyframe
  before ``start_s``; demuxing stops as soon as video and audio have passed the clip's end. Long
  clips are cut to ``max_seconds`` (``truncated_to_s`` records it).
* **Audio.** The first audio stream is resampled by libswresample to mono float32 at
  ``audio_sample_rate`` and cut to the clip's time span (``round(duration * rate)`` samples, fewer
  when the track is shorter; leading silence is zero-filled when audio starts after the video).
  No audio stream (or no audio in the span) is not an error: ``has_audio=False`` and an empty
  array; extraction records the gap. An audio track that fails to decode while the video is
  whole is the same gap, with the failure in ``DecodedClip.audio_error``.
* **Bad input raises :class:`MediaError`** with a short reason code:

  - ``empty_file``: 0 bytes.
  - ``not_a_video``: no container format recognised (text, HTML error pages, random bytes), or a
    still image (PNG/JPEG open as one-frame streams).
  - ``truncated``: the file was cut short. A video container signature is there but the file
    does not open (an mp4 cut before its index), or the video ends before the length its headers
    declare — by more than max(1 s, 10%) for a clean read (healthy headers can be that far off),
    by more than two frames after a read/decode error — and the file's structure agrees (an
    mp4's last top-level box or AVI's RIFF chunk runs past the end of the data; formats not
    checked, such as Matroska, count as cut).
  - ``corrupt``: the same failures in a file whose structure is complete (damage inside, e.g.
    overwritten bytes), so it was not cut.
  - ``no_video_stream``: audio-only file (cover art in an audio file does not count as video).
  - ``no_decoder``: the video codec is not supported.
  - ``no_frames``: a video stream without one decodable frame.
  - ``segment_out_of_range``: ``start_s`` at or after the end of the video.
  - ``bad_segment``: ``end_s <= start_s``.
  - ``decode_error``: any other FFmpeg failure.

  ``MediaError.stage`` says where: ``decode`` (container / read), ``video``.
"""

from conclugen.data.media.decode import DecodedClip, decode_clip
from conclugen.data.media.encode import encode_clip
from conclugen.data.media.integrity import MediaError
from conclugen.data.media.mel import log_mel, mel_filterbank

__all__ = ["DecodedClip", "MediaError", "decode_clip", "encode_clip", "log_mel", "mel_filterbank"]
