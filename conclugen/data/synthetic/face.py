"""Drawing the face and the room behind it.

The face is drawn upright in "face units" (u right, v down, face half-width 1) on a 2×
supersampled patch, downscaled once, then placed per frame with a similarity warp (head motion,
see :mod:`conclugen.data.synthetic.render`). The expression (mouth curve/opening/width, brow
height and tilt, eye opening, nose wrinkle) follows the clip's face emotion at a per-clip
intensity; identity comes from the speaker. The faces are drawn so that OpenCV's Haar cascade
(:mod:`conclugen.data.faces`) finds them in most frames.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from conclugen.data.synthetic.plan import SIZE

# Expressions: parameters at full intensity; a clip shows neutral + intensity·(target − neutral).
# eye: eye opening 0..1; brow: raise (−1 lowered … 1 raised); tilt: inner brow ends up (+) or
# down (−); curve: mouth corners up (+) or down (−); open: jaw opening; width: mouth width
# factor; wrinkle: nose wrinkle; asym: one-sided upper-lip raise; teeth: show teeth when open.
EXPR_KEYS = ("eye", "brow", "tilt", "curve", "open", "width", "wrinkle", "asym", "teeth")
EXPRESSIONS: dict[str, dict[str, float]] = {
    "neutral": dict(eye=0.6, brow=0.0, tilt=0.0, curve=0.0, open=0.0, width=1.0, wrinkle=0, asym=0, teeth=0),
    "joy": dict(eye=0.35, brow=0.15, tilt=0.0, curve=1.0, open=0.45, width=1.25, wrinkle=0, asym=0, teeth=1),
    "sadness": dict(
        eye=0.3, brow=0.1, tilt=1.0, curve=-0.85, open=0.0, width=0.9, wrinkle=0, asym=0, teeth=0
    ),
    "anger": dict(
        eye=0.4, brow=-0.7, tilt=-1.0, curve=-0.35, open=0.3, width=1.05, wrinkle=0.3, asym=0, teeth=1
    ),
    "surprise": dict(eye=1.0, brow=1.0, tilt=0.0, curve=0.0, open=1.0, width=0.7, wrinkle=0, asym=0, teeth=0),
    "fear": dict(eye=0.95, brow=0.7, tilt=0.8, curve=-0.3, open=0.55, width=1.25, wrinkle=0, asym=0, teeth=1),
    "disgust": dict(
        eye=0.3, brow=-0.35, tilt=-0.3, curve=-0.5, open=0.15, width=0.9, wrinkle=1.0, asym=1.0, teeth=0
    ),
}

PATCH_R = 40  # face half-width in patch pixels (1×)
PATCH_W, PATCH_H = int(3.2 * PATCH_R), int(4.6 * PATCH_R)
PATCH_CX, PATCH_CY = PATCH_W / 2, 1.9 * PATCH_R
SS = 2
# Tuned against the Haar cascade (a darker eye band against brighter cheeks and forehead):
# highlight strength towards white, eye-socket shade factor, sclera colour (toned down).
HIGHLIGHT, SOCKET_SHADE, SCLERA = 0.5, 0.45, (150, 146, 142)

Color = tuple[int, ...]


def expression(emotion: str, intensity: float, rest: dict[str, float] | None = None) -> dict[str, float]:
    """Expression parameters: neutral (plus the speaker's resting face) moved towards the
    emotion's target by ``intensity``."""
    base, target = EXPRESSIONS["neutral"], EXPRESSIONS[emotion]
    ex = {k: base[k] + intensity * (target[k] - base[k]) for k in EXPR_KEYS}
    ex["teeth"] = target["teeth"]
    for k, dv in (rest or {}).items():
        ex[k] += dv
    return ex


def shade(col: Color, f: float, add: float = 0.0) -> tuple[int, int, int]:
    """``col`` scaled by ``f`` plus ``add``, clipped to 0..255."""
    return tuple(int(np.clip(c * f + add, 0, 255)) for c in col)  # type: ignore[return-value]


class Canvas:
    """The supersampled patch being drawn (RGB and alpha mask), addressed in face units."""

    def __init__(self) -> None:
        self.s = PATCH_R * SS  # pixels per face unit
        self.img = np.zeros((PATCH_H * SS, PATCH_W * SS, 3), np.uint8)
        self.mask = np.zeros((PATCH_H * SS, PATCH_W * SS), np.uint8)
        self.ox, self.oy = PATCH_CX * SS, PATCH_CY * SS

    def points(self, u: Any, v: Any) -> np.ndarray:
        """Face units → OpenCV points with 4 fractional bits (drawn with shift=4)."""
        return np.round(
            np.stack([self.ox + self.s * np.asarray(u, float), self.oy + self.s * np.asarray(v, float)], -1)
            * 16
        ).astype(np.int32)

    def poly(self, u: Any, v: Any, col: Color, in_mask: bool = False) -> None:
        pts = self.points(u, v)
        cv2.fillPoly(self.img, [pts], col, cv2.LINE_AA, shift=4)
        if in_mask:
            cv2.fillPoly(self.mask, [pts], 255, cv2.LINE_AA, shift=4)

    def ell(self, u0: float, v0: float, a: float, b: float, col: Color, in_mask: bool = False) -> None:
        t = np.linspace(0, 2 * np.pi, 36, endpoint=False)
        self.poly(u0 + a * np.cos(t), v0 + b * np.sin(t), col, in_mask)

    def line(self, u: Any, v: Any, col: Color, th: float) -> None:
        cv2.polylines(
            self.img, [self.points(u, v)], False, col, max(1, int(round(th * self.s))), cv2.LINE_AA, shift=4
        )


def draw_face_patch(
    spk: dict[str, Any], ex: dict[str, float], cache: dict[str, Any] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(RGB patch, alpha mask) of an upright face with expression ``ex`` (keys EXPR_KEYS).

    ``cache`` (one dict per speaker) keeps the expression-independent layers between calls."""
    c = Canvas()
    if cache is not None and "base" in cache:
        c.img[:], c.mask[:] = cache["base"]
    else:
        _draw_head(c, spk)
        _draw_highlights(c, spk["skin"], spk["aspect"])
        _draw_fringe(c, spk["hair"], spk["hair_style"], spk["aspect"])
    if cache is not None and "base" not in cache:
        cache["base"] = (c.img.copy(), c.mask.copy())
    _draw_eyes(c, spk, ex)
    _draw_nose(c, spk["skin"], ex, spk["aspect"])
    _draw_mouth(c, spk, ex)
    # Downscale once (supersampling = anti-aliasing).
    img = cv2.resize(c.img, (PATCH_W, PATCH_H), interpolation=cv2.INTER_AREA)
    mask = cv2.resize(c.mask, (PATCH_W, PATCH_H), interpolation=cv2.INTER_AREA)
    return img, mask


def _draw_head(c: Canvas, spk: dict[str, Any]) -> None:
    """Back hair, body, neck, ears and the face: a superellipse whose lower half narrows to the chin."""
    H, skin, hair, style = spk["aspect"], spk["skin"], spk["hair"], spk["hair_style"]
    if style == 1:  # long
        c.poly([-1.15, 1.15, 1.25, -1.25], [-0.3 * H, -0.3 * H, 1.3 * H, 1.3 * H], hair, True)
    if style == 3:  # cropped: hair hugs the skull
        c.ell(0, -0.18 * H, 1.06, 0.96 * H, hair, True)
    else:
        c.ell(0, -0.22 * H, 1.13, 0.98 * H, hair, True)
    if style == 2:  # bun
        c.ell(0, -1.2 * H, 0.4, 0.3, hair, True)
    c.poly([-1.6, 1.6, 1.8, -1.8], [1.45 * H, 1.45 * H, 2.7 * H, 2.7 * H], spk["shirt"], True)
    c.ell(0, 1.45 * H, 1.6, 0.35 * H, spk["shirt"], True)
    c.poly([-0.38, 0.38, 0.42, -0.42], [0.5 * H, 0.5 * H, 1.5 * H, 1.5 * H], shade(skin, 0.78), True)
    for sx in (-1, 1):  # ears
        c.ell(sx * 0.98, 0.02 * H, 0.14, 0.22, shade(skin, 0.85), True)
    p = spk["squareness"]
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    cu, sv = np.cos(t), np.sin(t)
    u = np.sign(cu) * np.abs(cu) ** (2 / p)
    v = np.sign(sv) * np.abs(sv) ** (2 / p)
    u = u * (1 - spk["chin"] * np.clip(v, 0, 1) ** 2)
    c.poly(u, v * H, skin, True)


def _draw_highlights(c: Canvas, skin: Color, H: float) -> None:
    """Soft highlights where light falls on a rounded face (forehead, cheeks, nose bridge): the
    Haar cascade keys on bright cheeks/forehead against a darker eye band."""
    hl = tuple(int(v + (255 - v) * HIGHLIGHT) for v in skin)
    shine = np.zeros_like(c.img)
    sm = np.zeros_like(c.mask)
    for u0, v0, a, b in [
        (0, -0.55 * H, 0.6, 0.22 * H),
        (-0.45, 0.22 * H, 0.25, 0.16 * H),
        (0.45, 0.22 * H, 0.25, 0.16 * H),
        (0, 0.05 * H, 0.07, 0.22 * H),
    ]:
        tt = np.linspace(0, 2 * np.pi, 36, endpoint=False)
        pts = c.points(u0 + a * np.cos(tt), v0 + b * np.sin(tt))
        cv2.fillPoly(shine, [pts], hl, cv2.LINE_AA, shift=4)
        cv2.fillPoly(sm, [pts], 255, cv2.LINE_AA, shift=4)
    # Blur the highlight layer, then blend it in.
    sm = cv2.GaussianBlur(sm, (0, 0), 0.08 * c.s).astype(np.float32)[..., None] / 255.0
    shine = cv2.GaussianBlur(shine, (0, 0), 0.08 * c.s)
    c.img[:] = np.clip(c.img * (1 - sm) + shine.astype(np.float32) * 1.0, 0, 255).astype(np.uint8)


def _draw_fringe(c: Canvas, hair: Color, style: int, H: float) -> None:
    """Fringe / hairline (cropped hair: a high hairline)."""
    a = np.linspace(np.pi, 2 * np.pi, 24)
    drop = {0: 0.6, 1: 0.55, 2: 0.68, 3: 0.8}[style]
    c.poly(
        np.concatenate([np.cos(a) * 1.03, [0.92, 0.3, -0.3, -0.92]]),
        np.concatenate(
            [
                -0.3 * H + np.sin(a) * H * 0.75,
                [-drop * H, -(drop + 0.06) * H, -(drop + 0.1) * H, -drop * H],
            ]
        ),
        hair,
    )


def _draw_eyes(c: Canvas, spk: dict[str, Any], ex: dict[str, float]) -> None:
    """Eye sockets, eyes opened by ``ex["eye"]`` and brows raised / tilted by the expression."""
    H, skin, hair = spk["aspect"], spk["skin"], spk["hair"]
    eo = float(np.clip(ex["eye"], 0.02, 1.1))
    # Brows always darker than the skin (blonde or white hair still has visible brows).
    brow_col = tuple(int(min(h * 0.55, s * 0.45)) for h, s in zip(hair, skin, strict=True))
    for sx in (-1, 1):
        ex_, ey = sx * 0.38, -0.1 * H
        c.ell(ex_, ey, 0.26, 0.12 + 0.08 * eo, shade(skin, SOCKET_SHADE))  # socket shadow
        c.ell(ex_, ey, 0.17, 0.035 + 0.07 * eo, (25, 20, 20))  # lash line
        c.ell(ex_, ey, 0.14, 0.025 + 0.06 * eo, SCLERA)  # sclera
        c.ell(ex_, ey, 0.085, min(0.085, 0.025 + 0.07 * eo), spk["iris"])
        c.ell(ex_, ey, 0.04, min(0.04, 0.015 + 0.04 * eo), (10, 10, 10))
        yb = ey - 0.2 - 0.13 * ex["brow"]
        tilt = ex["tilt"]
        inner, outer = ex_ - sx * 0.18, ex_ + sx * 0.21
        c.line(
            [inner, ex_, outer],
            [yb - 0.09 * tilt, yb - 0.03 - 0.01 * tilt, yb + 0.05 * tilt],
            brow_col,
            spk["brow_thick"],
        )


def _draw_nose(c: Canvas, skin: Color, ex: dict[str, float], H: float) -> None:
    c.poly([0, -0.12, 0.12], [-0.05 * H, 0.3 * H, 0.3 * H], shade(skin, 0.85))
    c.ell(0, 0.3 * H, 0.15, 0.055, shade(skin, 0.7))
    for sx in (-1, 1):
        c.ell(sx * 0.06, 0.31 * H, 0.035, 0.02, shade(skin, 0.35))
    if ex["wrinkle"] > 0.05:
        for sx in (-1, 1):
            c.line([sx * 0.05, sx * 0.14], [0.02 * H, 0.1 * H], shade(skin, 0.6), 0.02 + 0.02 * ex["wrinkle"])
            c.line([sx * 0.06, sx * 0.16], [0.1 * H, 0.17 * H], shade(skin, 0.6), 0.02 * ex["wrinkle"])


def _draw_mouth(c: Canvas, spk: dict[str, Any], ex: dict[str, float]) -> None:
    """Upper and lower lip curves; corners lifted by ``curve``, the jaw opened by ``open``."""
    skin = spk["skin"]
    my = 0.58 * spk["aspect"]
    mw = 0.36 * ex["width"]
    curve, op = ex["curve"], max(0.0, ex["open"])
    xs = np.linspace(-mw, mw, 17)
    k = (xs / mw) ** 2
    asym = ex["asym"] * 0.06 * np.clip(xs / mw, 0, 1)
    upper_v = my - curve * 0.15 * k - 0.02 - op * 0.05 - asym
    lower_v = my - curve * 0.15 * k + 0.02 + op * 0.22 * (1 - k)
    lip = shade((180, 70, 75), 0.6 + 0.4 * spk["lip"], 0) if np.mean(skin) > 120 else shade(skin, 0.6, 20)
    c.poly(np.concatenate([xs, xs[::-1]]), np.concatenate([upper_v - 0.035, (lower_v + 0.045)[::-1]]), lip)
    c.poly(np.concatenate([xs, xs[::-1]]), np.concatenate([upper_v, lower_v[::-1]]), (60, 20, 25))
    if ex["teeth"] > 0.5 and op > 0.2:
        tv = upper_v + 0.35 * (lower_v - upper_v)
        inner_xs = xs[2:-2]
        c.poly(
            np.concatenate([inner_xs, inner_xs[::-1]]),
            np.concatenate([upper_v[2:-2] + 0.005, tv[2:-2][::-1]]),
            (235, 230, 220),
        )


def draw_background(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """A cluttered room-like background: gradient wall, shapes, frames, lines."""
    c1 = rng.integers(40, 220, 3).astype(np.float32)
    c2 = np.clip(c1 + rng.integers(-60, 60, 3), 0, 255).astype(np.float32)
    g = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    bg = np.ascontiguousarray((c1 * (1 - g) + c2 * g).repeat(size, axis=1).astype(np.uint8))
    for _ in range(int(rng.integers(4, 11))):
        col = tuple(int(x) for x in rng.integers(0, 256, 3))
        x, y = (int(v) for v in rng.integers(0, size, 2))
        r = int(rng.integers(4, 30))
        kind = int(rng.integers(4))
        if kind == 0:
            cv2.circle(bg, (x, y), r, col, -1, cv2.LINE_AA)
        elif kind == 1:
            cv2.rectangle(bg, (x, y), (x + r, y + int(rng.integers(4, 40))), col, -1)
        elif kind == 2:  # picture frame
            cv2.rectangle(bg, (x, y), (x + r + 10, y + r), col, 3)
        else:
            x2, y2 = (int(v) for v in rng.integers(0, size, 2))
            cv2.line(bg, (x, y), (x2, y2), col, int(rng.integers(1, 4)), cv2.LINE_AA)
    return bg
