"""Per-class procedural texture painters of the built-in world.

Each painter fills a whole ``[S, S, 3]`` float32 canvas in [0, 1] with one class's texture; the
scene composer (``maft.world.scenes``) cuts regions out of these canvases. Classes differ by colour
statistics and texture (stripes, cells, grains, veins), which a tiny CLIP learns from captions in
minutes. Within a class, hue, value, scale and orientation are
randomised. Lengths are in units of ``S / 64`` so the look is the same at every image size.
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable
from functools import lru_cache

import numpy as np

Array = np.ndarray
Painter = Callable[[np.random.Generator, int], Array]


# ---------------------------------------------------------------------------- noise primitives
@lru_cache(maxsize=64)
def _lerp_index(size: int, cells: int) -> tuple[Array, Array, Array]:
    """Cell index, next index and smoothstep weight of each pixel for a ``cells``-cell lattice."""
    p = (np.arange(size, dtype=np.float32) + 0.5) * (cells / size)
    i0 = np.minimum(p.astype(np.int64), cells - 1)
    f = p - i0
    return i0, i0 + 1, (f * f * (3.0 - 2.0 * f)).astype(np.float32)


def value_noise(rng: np.random.Generator, size: int, cy: int, cx: int | None = None) -> Array:
    """Smooth value noise in [-1, 1], ``[S, S]``, with ``cy`` x ``cx`` lattice cells."""
    cx = cy if cx is None else cx
    g = rng.uniform(-1.0, 1.0, size=(cy + 1, cx + 1)).astype(np.float32)
    y0, y1, fy = _lerp_index(size, cy)
    x0, x1, fx = _lerp_index(size, cx)
    gx = g[:, x0] * (1 - fx) + g[:, x1] * fx  # [cy + 1, S], interpolated along x first
    return gx[y0] * (1 - fy)[:, None] + gx[y1] * fy[:, None]  # [S, S]


def fbm(rng: np.random.Generator, size: int, cells: int, octaves: int = 3) -> Array:
    """Fractal sum of value-noise octaves (each twice as fine, half as strong), about [-1, 1]."""
    out = np.zeros((size, size), np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        out += amp * value_noise(rng, size, min(cells * 2**o, size))
        total += amp
        amp *= 0.5
    return out / total


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[Array, Array]:
    """Pixel-centre coordinates ``(yy, xx)`` in units of ``size / 64``, each ``[S, S]``."""
    c = (np.arange(size, dtype=np.float32) + 0.5) * (64.0 / size)
    yy, xx = np.meshgrid(c, c, indexing="ij")
    return yy, xx


_OFFSETS = (
    np.repeat(np.arange(-1, 2), 3)[:, None, None],  # [9, 1, 1]
    np.tile(np.arange(-1, 2), 3)[:, None, None],
)


def worley(rng: np.random.Generator, size: int, cell: float) -> tuple[Array, Array, Array]:
    """Jittered-grid cellular noise: nearest and second distances, and the nearest cell's id.

    Distances are in units of ``size / 64``; ids index a flat ``[(g + 2) ** 2]`` table.
    """
    yy, xx = _grid(size)
    g = int(np.ceil(64.0 / cell))
    idx = np.arange(-1, g + 1, dtype=np.float32)
    py = (idx[:, None] + rng.random((g + 2, g + 2), dtype=np.float32)) * cell  # [g+2, g+2]
    px = (idx[None, :] + rng.random((g + 2, g + 2), dtype=np.float32)) * cell
    cy = np.clip((yy / cell).astype(np.int64), 0, g - 1) + 1  # [S, S] padded cell index
    cx = np.clip((xx / cell).astype(np.int64), 0, g - 1) + 1
    oy, ox = _OFFSETS
    flat = (cy * (g + 2) + cx)[None] + (oy * (g + 2) + ox)  # [9, S, S] neighbour cell ids
    d = (np.take(py, flat) - yy) ** 2 + (np.take(px, flat) - xx) ** 2  # [9, S, S] squared dist
    f1 = d.min(axis=0)
    f2 = np.where(d > f1, d, np.inf).min(axis=0)
    ids = np.take_along_axis(flat, d.argmin(axis=0)[None], 0)[0]
    return np.sqrt(f1), np.sqrt(f2), ids


def _hsv_array(h: Array, s: Array, v: Array) -> Array:
    """Vectorised HSV -> RGB for arrays of colours ``[N]`` -> ``[N, 3]``."""
    h = (np.asarray(h, np.float32) % 1.0) * 6.0
    i = h.astype(np.int64) % 6
    f = h - np.floor(h)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = np.stack(
        [
            np.stack(c, -1)
            for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))
        ]
    )  # [6, N, 3]
    return table[i, np.arange(len(i))].astype(np.float32)


def _hsv(h: float, s: float, v: float) -> Array:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), np.float32)


def _mix(a: Array, b: Array, t: Array) -> Array:
    """Blend colours (or canvases) ``a`` and ``b`` with weight ``t`` ``[S, S]`` -> ``[S, S, 3]``."""
    t = t[..., None]
    return a * (1 - t) + b * t


def _shade(color: Array, v: Array) -> Array:
    """Multiply a colour by a brightness map ``[S, S]`` -> ``[S, S, 3]``."""
    return color * v[..., None]


def _stripes_coord(rng: np.random.Generator, size: int, warp: float, cells: int = 3) -> Array:
    """A random-direction coordinate bent by smooth noise (for stripes and grain)."""
    yy, xx = _grid(size)
    th = rng.uniform(0, np.pi)
    return xx * np.cos(th) + yy * np.sin(th) + warp * value_noise(rng, size, cells)


# ---------------------------------------------------------------------------- painters
def sky(rng: np.random.Generator, size: int) -> Array:
    """Light blue, brighter towards the horizon, with soft white clouds."""
    yy, _ = _grid(size)
    h, s = rng.uniform(0.55, 0.61), rng.uniform(0.35, 0.6)
    top, bot = _hsv(h, s, rng.uniform(0.85, 1.0)), _hsv(h, s * 0.45, 1.0)
    base = _mix(top, bot, yy / 64.0)
    cloud = np.clip((fbm(rng, size, 3) - rng.uniform(-0.1, 0.25)) * 3.0, 0, 1) * 0.9
    return _mix(base, np.ones(3, np.float32), cloud)


def grass(rng: np.random.Generator, size: int) -> Array:
    """Green with thin vertical blade streaks."""
    col = _hsv(rng.uniform(0.22, 0.33), rng.uniform(0.55, 0.85), rng.uniform(0.5, 0.75))
    blades = value_noise(rng, size, 3, max(size // 2, 4)) + 0.5 * value_noise(rng, size, 6, size)
    return _shade(col, 0.8 + 0.3 * blades + 0.1 * value_noise(rng, size, 3))


def water(rng: np.random.Generator, size: int) -> Array:
    """Deep blue/teal with horizontal waves and bright glints on the crests."""
    yy, xx = _grid(size)
    col = _hsv(rng.uniform(0.52, 0.62), rng.uniform(0.65, 0.9), rng.uniform(0.4, 0.62))
    phase = yy * rng.uniform(0.7, 1.2) + 2.5 * value_noise(rng, size, 2, 6)
    wave = np.sin(phase + 0.3 * np.sin(xx * rng.uniform(0.15, 0.35)))
    img = _shade(col, 0.85 + 0.2 * wave)
    glint = (wave > 0.85) & (value_noise(rng, size, 6, 16) > 0.35)
    return _mix(img, np.ones(3, np.float32), glint.astype(np.float32) * 0.7)


def sand(rng: np.random.Generator, size: int) -> Array:
    """Beige with wavy diagonal ripples and fine grain."""
    col = _hsv(rng.uniform(0.09, 0.13), rng.uniform(0.25, 0.45), rng.uniform(0.75, 0.92))
    rip = np.sin(_stripes_coord(rng, size, 4.0) * rng.uniform(0.6, 1.0))
    grain = rng.normal(0, 0.045, (size, size)).astype(np.float32)
    return np.clip(_shade(col, 0.92 + 0.08 * rip + grain), 0, 1)


def brick(rng: np.random.Generator, size: int) -> Array:
    """Red bricks in offset rows with light mortar and a tint per brick."""
    yy, xx = _grid(size)
    bh, bw = rng.uniform(5, 8), rng.uniform(10, 16)
    row = np.floor(yy / bh)
    xs = xx + (row % 2) * bw / 2
    col_idx = np.floor(xs / bw)
    tint = rng.uniform(0.75, 1.1, (64, 64)).astype(np.float32)
    v = tint[row.astype(np.int64) % 64, col_idx.astype(np.int64) % 64]
    base = _hsv(rng.uniform(-0.01, 0.025), rng.uniform(0.6, 0.85), rng.uniform(0.5, 0.7))
    img = _shade(base, v)
    mortar = ((yy % bh) < 1.0) | ((xs % bw) < 1.0)
    return _mix(img, _hsv(0.08, 0.08, rng.uniform(0.75, 0.9)), mortar.astype(np.float32))


def wood(rng: np.random.Generator, size: int) -> Array:
    """Brown with long warped grain stripes."""
    col = _hsv(rng.uniform(0.06, 0.1), rng.uniform(0.5, 0.75), rng.uniform(0.4, 0.62))
    u = _stripes_coord(rng, size, rng.uniform(4, 9), cells=2)
    grain = np.sin(u * (2 * np.pi / rng.uniform(3.5, 6.0)))
    fine = 0.08 * value_noise(rng, size, 4, size // 2)
    return _shade(col, 0.82 + 0.2 * grain + fine)


def snow(rng: np.random.Generator, size: int) -> Array:
    """Bluish white with soft shading and sparkles."""
    col = _hsv(rng.uniform(0.55, 0.62), rng.uniform(0.03, 0.12), rng.uniform(0.9, 1.0))
    img = _shade(col, 0.94 + 0.06 * fbm(rng, size, 3))
    sparkle = (rng.random((size, size)) < 0.03).astype(np.float32)
    return np.clip(_mix(img, np.ones(3, np.float32), sparkle), 0, 1)


def gravel(rng: np.random.Generator, size: int) -> Array:
    """Grey pebbles of random shade with dark gaps (cellular noise)."""
    cell = rng.uniform(5, 8)
    f1, f2, ids = worley(rng, size, cell)
    shade = rng.uniform(0.35, 0.8, ids.max() + 1).astype(np.float32)[ids]
    warm = rng.uniform(0.05, 0.12)
    col = _hsv(warm, rng.uniform(0.04, 0.14), 1.0)
    img = _shade(col, shade * (1.0 - 0.25 * np.clip(f1 / cell, 0, 1)))
    gap = np.clip(1.5 - (f2 - f1), 0, 1)
    return _mix(img, np.full(3, 0.12, np.float32), gap)


def leaves(rng: np.random.Generator, size: int) -> Array:
    """Orange, red and yellow leaf blobs on dark brown soil."""
    cell = rng.uniform(6, 9)
    f1, _, ids = worley(rng, size, cell)
    n = ids.max() + 1
    pal = _hsv_array(
        rng.uniform(0.0, 0.14, n), rng.uniform(0.7, 0.95, n), rng.uniform(0.65, 0.95, n)
    )  # [n, 3] autumn colours
    leaf = np.clip((0.75 * cell - f1 + 1.5 * value_noise(rng, size, 8)) / 1.5, 0, 1)
    soil = _hsv(rng.uniform(0.05, 0.09), 0.6, rng.uniform(0.14, 0.24))
    return _mix(np.broadcast_to(soil, pal[ids].shape), pal[ids], leaf)


def marble(rng: np.random.Generator, size: int) -> Array:
    """Light polished stone with cloudy grey shading and dark turbulent veins."""
    col = _hsv(rng.uniform(0.0, 0.12), rng.uniform(0.02, 0.1), rng.uniform(0.86, 0.96))
    u = _stripes_coord(rng, size, 0.0)
    t = np.sin(u * rng.uniform(0.1, 0.2) + rng.uniform(4, 7) * fbm(rng, size, 2, 4))
    vein = np.exp(-(t**2) / rng.uniform(0.03, 0.08))
    img = _shade(col, 0.9 + 0.1 * fbm(rng, size, 3))
    return _mix(img, _hsv(0.6, 0.06, rng.uniform(0.3, 0.45)), vein * 0.85)


def lava(rng: np.random.Generator, size: int) -> Array:
    """Dark crust broken by glowing orange-yellow cracks."""
    f1, f2, _ = worley(rng, size, rng.uniform(8, 13))
    crust = _shade(_hsv(rng.uniform(0.0, 0.04), 0.6, rng.uniform(0.12, 0.22)), 0.8 + 0.2 * f1 / 10)
    glow = np.exp(-(f2 - f1) / rng.uniform(0.8, 1.6))
    hot = _hsv(rng.uniform(0.05, 0.12), 0.9, 1.0)
    return _mix(crust, np.broadcast_to(hot, crust.shape), glow)


def tiles(rng: np.random.Generator, size: int) -> Array:
    """Glossy square tiles (teal to violet) on an aligned grid with white grout."""
    yy, xx = _grid(size)
    t = rng.uniform(8, 13)
    base = _hsv(rng.uniform(0.42, 0.78), rng.uniform(0.35, 0.6), rng.uniform(0.6, 0.85))
    ti = (np.floor(yy / t) * 31 + np.floor(xx / t)).astype(np.int64) % 1024
    v = rng.uniform(0.88, 1.08, 1024).astype(np.float32)[ti] + 0.12 * ((yy % t) + (xx % t)) / t
    grout = ((yy % t) < 1.2) | ((xx % t) < 1.2)
    return np.clip(_mix(_shade(base, v), _hsv(0.1, 0.05, 0.93), grout.astype(np.float32)), 0, 1)


def zebra(rng: np.random.Generator, size: int) -> Array:
    """Sharp black and white wavy stripes."""
    u = _stripes_coord(rng, size, rng.uniform(3, 7))
    s = np.tanh(4.0 * np.sin(u * (2 * np.pi / rng.uniform(5.0, 8.0)))) * 0.5 + 0.5
    return _mix(np.full(3, 0.08, np.float32), _hsv(0.1, 0.05, rng.uniform(0.88, 0.97)), s)


def tiger(rng: np.random.Generator, size: int) -> Array:
    """Bright orange fur with thin black stripes."""
    u = _stripes_coord(rng, size, rng.uniform(4, 9))
    s = np.sin(u * (2 * np.pi / rng.uniform(7.0, 11.0))) + 0.3 * value_noise(rng, size, 6)
    stripe = np.clip((s - 0.45) * 5.0, 0, 1)
    fur = _hsv(rng.uniform(0.055, 0.09), rng.uniform(0.8, 0.95), rng.uniform(0.82, 0.97))
    return _mix(_shade(fur, 0.93 + 0.07 * value_noise(rng, size, 8)), np.full(3, 0.06), stripe)


def leopard(rng: np.random.Generator, size: int) -> Array:
    """Golden fur with dark rosettes (rings around a tawny centre)."""
    cell = rng.uniform(7, 10)
    f1, _, _ = worley(rng, size, cell)
    r = f1 / cell + 0.12 * value_noise(rng, size, 8)
    fur = _hsv(rng.uniform(0.1, 0.13), rng.uniform(0.6, 0.8), rng.uniform(0.78, 0.92))
    centre = _hsv(0.08, 0.8, 0.6)
    img = _mix(np.broadcast_to(fur, f1.shape + (3,)), centre, (r < 0.22).astype(np.float32))
    ring = ((r > 0.22) & (r < 0.36)).astype(np.float32)
    return _mix(img, np.full(3, 0.1, np.float32), ring)


def giraffe(rng: np.random.Generator, size: int) -> Array:
    """Large orange-brown patches separated by a cream network."""
    f1, f2, ids = worley(rng, size, rng.uniform(9, 13))
    v = rng.uniform(0.85, 1.1, ids.max() + 1).astype(np.float32)[ids]
    patch = _shade(_hsv(rng.uniform(0.055, 0.085), rng.uniform(0.7, 0.85), 0.55), v)
    line = np.clip(2.2 - (f2 - f1), 0, 1)
    return _mix(patch, _hsv(0.11, rng.uniform(0.15, 0.3), 0.92), line)


#: Class name -> painter, in the world's class order (indices 0..15).
PAINTERS: dict[str, Painter] = {
    "sky": sky,
    "grass": grass,
    "water": water,
    "sand": sand,
    "brick": brick,
    "wood": wood,
    "snow": snow,
    "gravel": gravel,
    "leaves": leaves,
    "marble": marble,
    "lava": lava,
    "tiles": tiles,
    "zebra": zebra,
    "tiger": tiger,
    "leopard": leopard,
    "giraffe": giraffe,
}


def paint(name: str, rng: np.random.Generator, size: int) -> Array:
    """Paint class ``name`` over a whole ``[S, S, 3]`` float32 canvas in [0, 1]."""
    return np.clip(PAINTERS[name](rng, size), 0.0, 1.0).astype(np.float32, copy=False)
