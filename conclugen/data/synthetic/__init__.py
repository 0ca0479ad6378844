"""A synthetic multimodal emotion corpus in MELD's distributed layout.

The real corpora cannot be downloaded here, so every test, benchmark and the demo use this one.
Each clip is a 2–4 s mp4 (H.264 160×160 at 25 fps + AAC mono) of a drawn talking face:

- **video** (:mod:`.face`, :mod:`.render`): the expression follows the clip's face emotion at a
  per-clip intensity, with an onset ramp, blinks and a mouth that moves with the speech envelope;
  identity (face shape, aspect, skin, hair colour and style, eye colour, clothes) comes from a
  recurring speaker, and per clip position, size, head motion, lighting and a cluttered
  background vary.
- **audio** (:mod:`.speech`): espeak-ng speech with emotion-dependent prosody; without espeak-ng
  a small numpy formant synthesiser stands in (announced in the summary).
- **text** (:mod:`.transcripts`): the transcript from emotion-conditioned sentence templates.

``difficulty`` (0…1) sets how often each modality is neutral or misleading (independently per
modality, :mod:`.plan`) and how weak the expressions are, so that no single modality gives the
label away. :func:`synthesize` (:mod:`.corpus`) writes the corpus; with ``unlabeled=N`` also an
unlabeled pretraining pool from the same process and cast, which
:func:`conclugen.data.synthetic.pool.load_synthetic` reads as split ``unlabeled``.

Output is byte-for-byte deterministic for a seed (given the same espeak-ng, x264 and
libavformat versions): each clip draws from its own ``SeedSequence([seed, index])``, x264 runs
single-threaded and the mp4 muxer runs in bitexact mode with no creation time.
"""

from conclugen.data.synthetic.corpus import SynthSummary, synthesize
from conclugen.data.synthetic.plan import EMOTIONS

__all__ = ["EMOTIONS", "SynthSummary", "synthesize"]
