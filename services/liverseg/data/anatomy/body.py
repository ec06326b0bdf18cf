"""The torso of one synthetic patient: outline and layers along z, the diaphragm, the rib cage and the liver.

Body coordinates: ``u`` to the patient's right, ``v`` anterior (both mm from the body's centre line), ``t`` mm
above the right hemidiaphragm's dome (negative: below). World RAS+ is ``x = cx + u``, ``y = cy + v``,
``z = dome_z + t``. Landmarks are set for a reference adult and scaled by the frame ``f`` (in-plane) and the
height ``h`` (along z); fat is separate, so a large patient is not a magnified small one.

Reference levels (right dome at T9/T10, ~27 mm per thoracic and ~38 mm per lumbar level): lung apices ~+250,
carina ~+130, T12/L1 ~−80, kidneys' hila ~−125, iliac crests and aortic bifurcation ~−210 (L4), sacral
promontory ~−280, femoral heads and pubic symphysis ~−400.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from liverseg.data.anatomy.fields import LatticeField
from liverseg.data.anatomy.shapes import Box, Shape

__all__ = ["APEX_T", "AboveDiaphragm", "Diaphragm", "Frame", "Liver", "Rib", "Section", "Torso"]

# Knots of the outline along t (mm above the dome, reference adult) and the outline's scale there.
PROFILE_T = np.array([320.0, 200.0, 100.0, 0.0, -100.0, -200.0, -300.0, -400.0, -520.0])
WIDTH = np.array([0.97, 1.0, 1.0, 1.0, 0.97, 0.97, 1.03, 1.08, 1.06])
FRONT = np.array([0.86, 0.92, 0.97, 1.0, 1.0, 1.0, 0.95, 0.88, 0.84])
BACK = np.array([0.92, 0.97, 1.0, 1.0, 1.0, 1.0, 1.02, 1.02, 1.0])
# The cavity inside the muscle wall narrows in the pelvis: bone and gluteal muscle take its sides.
CAVITY_WIDTH = np.array([0.93, 0.97, 1.0, 1.0, 1.0, 0.97, 0.86, 0.62, 0.5])
APEX_T = 250.0  # lung apices


@dataclass(frozen=True)
class Frame:
    """Where the patient is in the world and how big: body centre line (cx, cy), dome height, scales."""

    cx: float
    cy: float
    dome_z: float
    f: float
    h: float

    def p(self, u: float, v: float, t: float) -> np.ndarray:
        """World point (3,) of body coordinates already in mm (scale them by ``f``/``h`` first)."""
        return np.array([self.cx + u, self.cy + v, self.dome_z + t])

    def t(self, z: np.ndarray) -> np.ndarray:
        return z - np.float32(self.dome_z)


@dataclass
class Torso:
    """Outline of the trunk and its layers, each a ``Section`` of the outline moved inward.

    Args:
        frame: the patient's placement and scales.
        half_width: body half-width at the dome (mm); ``front``/``back``: anterior/posterior half-depths.
        jitter: per-knot random factors (len(PROFILE_T), 3) on width, front and back, about 1.
        exponent: superellipse exponent of the cross-section (2 = ellipse, larger = squarer).
        belly: extra anterior depth of the abdomen (fraction), the shape of central obesity.
        wobble: a smooth field (unit std) moving every layer's outline in and out by ``wobble_mm``: no trunk is
            a superellipse.
    """

    frame: Frame
    half_width: float
    front: float
    back: float
    jitter: np.ndarray
    exponent: float
    belly: float
    wobble: LatticeField
    wobble_mm: float

    def knots(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        t = PROFILE_T * self.frame.h
        bulge = 1 + self.belly * np.exp(-(((PROFILE_T + 170) / 110) ** 2))
        return (t, self.half_width * WIDTH * self.jitter[:, 0], self.front * FRONT * self.jitter[:, 1] * bulge,
                self.back * BACK * self.jitter[:, 2])

    def at(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Half-width, front and back half-depth (mm) at heights ``t`` (mm above the dome)."""
        kt, w, a, b = self.knots()
        order = np.argsort(kt)
        return (np.interp(t, kt[order], w[order]), np.interp(t, kt[order], a[order]),
                np.interp(t, kt[order], b[order]))

    def section(self, inset: tuple[float, float, float], narrowing: bool = False) -> Section:
        """The outline moved inward by ``inset`` = (sides, front, back) mm; ``narrowing`` applies the cavity's
        pelvic narrowing."""
        return Section(self, inset, narrowing)


@dataclass
class Section(Shape):
    """Inside the torso outline less an inset: skin, fat, muscle wall or cavity boundary, depending on it."""

    torso: Torso
    inset: tuple[float, float, float]
    narrowing: bool

    def bounds(self) -> Box:
        fr = self.torso.frame
        kt, w, a, b = self.torso.knots()
        reach = np.array([w.max(), a.max(), b.max()])
        return (np.array([fr.cx - reach[0], fr.cy - reach[2], fr.dome_z + kt.min()]),
                np.array([fr.cx + reach[0], fr.cy + reach[1], fr.dome_z + kt.max()]))

    def dims(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        t = np.asarray(self.torso.frame.t(z), dtype=np.float64)
        w, a, b = self.torso.at(t)
        if self.narrowing:
            w = w * np.interp(t, (PROFILE_T * self.torso.frame.h)[::-1], CAVITY_WIDTH[::-1])
        side, front, back = self.inset
        return (np.maximum(w - side, 1.0).astype(np.float32), np.maximum(a - front, 1.0).astype(np.float32),
                np.maximum(b - back, 1.0).astype(np.float32))

    def distance(self, x, y, z):
        fr = self.torso.frame
        w, a, b = self.dims(z)
        u = x - np.float32(fr.cx)
        v = y - np.float32(fr.cy)
        depth = np.where(v >= 0, a, b)
        p = np.float32(self.torso.exponent)
        r = (np.abs(u / w) ** p + np.abs(v / depth) ** p) ** (1 / p)
        d = (r - 1) * (2 * w * depth / (w + depth))
        d += np.float32(self.torso.wobble_mm) * self.torso.wobble.sample(x.ravel(), y.ravel(), z.ravel())
        return d.astype(np.float32)


@dataclass
class Diaphragm:
    """Height of the diaphragm's upper surface, t(u, v) mm: two domes (the left one lower) falling into the
    costophrenic recesses (deepest at the back), and between them the central tendon, a flatter saddle
    ``tendon_drop`` mm below the right dome on which the heart rests.

    Args:
        frame: placement.
        cavity: the cavity section (its width and depths at the dome scale the domes).
        left_drop: how much lower the left dome is (mm).
        falls: drop (mm) from a dome's apex to the (lateral, medial, anterior, posterior) cavity wall.
        tendon_drop: depth (mm) of the central tendon below the right dome.
        ripple: a smooth field (unit std) that makes the surface irregular by ``ripple_mm``.
    """

    frame: Frame
    cavity: Section
    left_drop: float
    falls: tuple[float, float, float, float]
    tendon_drop: float
    ripple: LatticeField
    ripple_mm: float

    def apexes(self) -> tuple[tuple[float, float], tuple[float, float]]:
        w, _a, b = (float(d[0]) for d in self.cavity.dims(np.array([self.frame.dome_z])))
        return (0.42 * w, -0.12 * b), (-0.42 * w, -0.15 * b)

    def tendon(self) -> tuple[float, float]:
        """(u, v) mm of the central tendon's middle, under the heart."""
        w, a, _b = (float(d[0]) for d in self.cavity.dims(np.array([self.frame.dome_z])))
        return -0.08 * w, 0.3 * a

    def height(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """t (mm above the right dome) of the diaphragm at world (x, y); broadcast (nx, ny, 1)."""
        fr = self.frame
        w, a, b = (float(d[0]) for d in self.cavity.dims(np.array([fr.dome_z])))
        u = x - np.float32(fr.cx)
        v = y - np.float32(fr.cy)
        lateral, medial, front, back = self.falls
        domes = []
        for (au, av), side, drop in ((self.apexes()[0], 1.0, 0.0), (self.apexes()[1], -1.0, self.left_drop)):
            out = side * (u - au)  # > 0: toward that side's lateral wall
            du = np.where(out > 0, out / (w - abs(au)), -out / abs(au))
            fall_u = np.where(out > 0, lateral, medial)
            dv = np.where(v > av, (v - av) / (a - av), (av - v) / (b + av))
            fall_v = np.where(v > av, front, back)
            domes.append(-drop - fall_u * du**2 - fall_v * dv**2)
        tu, tv = self.tendon()
        du, dv = (u - tu) / (0.45 * w), np.maximum(v - tv, 0) / (a - tv)
        tendon = -self.tendon_drop - 0.3 * lateral * du**2 - front * dv**2
        # Smooth maximum: exact at each apex, the valleys between the three rounded (by <= 7 mm).
        k = np.float32(6.0)
        top = np.logaddexp(np.logaddexp(domes[0] / k, domes[1] / k), tendon / k) * k
        ripple = self.ripple.sample(x.ravel(), y.ravel(), np.array([fr.dome_z]))
        return (top + self.ripple_mm * ripple).astype(np.float32)


@dataclass
class AboveDiaphragm(Shape):
    """Points above (``above``) or below the diaphragm surface offset by ``offset`` mm, within ``box``."""

    diaphragm: Diaphragm
    box: Box
    offset: float = 0.0
    above: bool = True

    def bounds(self) -> Box:
        return self.box

    def distance(self, x, y, z):
        height = self.diaphragm.height(x, y) + np.float32(self.offset)
        d = height - self.diaphragm.frame.t(z)
        return (d if self.above else -d).astype(np.float32)


@dataclass
class Rib(Shape):
    """One rib (one side) as a band around the cavity wall, sloping down from the spine toward the front.

    Args:
        cavity: the cavity section; the rib lies ``depth``..``depth + thickness`` mm outside it.
        side: +1 the patient's right, −1 the left.
        top_t: t (mm) of the rib's upper edge at the spine; it drops ``drop`` mm by the front.
        reach: angle (rad) from the back midline where the rib (with its cartilage) ends.
        height: the rib's height (mm); ``thickness`` its radial thickness (mm).
    """

    cavity: Section
    side: float
    top_t: float
    drop: float
    reach: float
    height: float = 9.0
    thickness: float = 7.0
    depth: float = 1.0

    def bounds(self) -> Box:
        lo, hi = self.cavity.bounds()
        fr = self.cavity.torso.frame
        lo, hi = lo.copy() - 15, hi.copy() + 15
        lo[2] = fr.dome_z + self.top_t - self.drop - self.height - 2
        hi[2] = fr.dome_z + self.top_t + 2
        if self.side > 0:
            lo[0] = fr.cx - 20
        else:
            hi[0] = fr.cx + 20
        return lo, hi

    def angle(self, x, y) -> np.ndarray:
        """Angle (rad) from the back midline around to this side, 0..π."""
        fr = self.cavity.torso.frame
        return np.arctan2(self.side * (x - np.float32(fr.cx)), -(y - np.float32(fr.cy))).astype(np.float32)

    def distance(self, x, y, z):
        fr = self.cavity.torso.frame
        theta = self.angle(x, y)
        centre_t = self.top_t - self.height / 2 - self.drop * (1 - np.cos(np.clip(theta, 0, np.pi))) / 2
        along = np.abs(fr.t(z) - centre_t) - np.float32(self.height / 2)
        radial = np.abs(self.cavity.distance(x, y, z) - np.float32(self.depth + self.thickness / 2))
        radial -= np.float32(self.thickness / 2)
        ends = np.maximum(theta - np.float32(self.reach), np.float32(0.12) - theta) * np.float32(100.0)
        return np.maximum(np.maximum(along, radial), ends).astype(np.float32)


@dataclass
class Liver(Shape):
    """The liver as the space between the diaphragm and a visceral surface, inside the cavity.

    The top is the diaphragm (so the right lobe fills the right dome); the bottom falls from the left lobe's thin
    edge across the midline to the right lobe's tip, low and lateral; the left lobe lies in front of the stomach
    and ends at ``left_tip``; the caudate lobe is a separate bulge behind, left of the IVC.

    Args:
        frame, cavity, diaphragm: the torso it sits in.
        right_length: craniocaudal length of the right lobe at its tip (mm).
        left_tip: how far left the left lobe reaches, as a fraction of the cavity half-width (negative).
        left_thickness: the left lobe's thickness near the midline (mm).
        front_rise: how much higher the anterior edge ends than the posterior (fraction of the depth).
        caudate: the caudate lobe (a shape, united with the rest).
        bumps: a smooth field (unit std) moving the surface by ``bump_mm``.
    """

    frame: Frame
    cavity: Section
    diaphragm: Diaphragm
    right_length: float
    left_tip: float
    left_thickness: float
    front_rise: float
    caudate: Shape
    bumps: LatticeField
    bump_mm: float

    def bounds(self) -> Box:
        lo, hi = self.cavity.bounds()
        fr = self.frame
        lo, hi = lo.copy(), hi.copy()
        hi[2] = fr.dome_z + 2 * self.bump_mm + 5
        lo[2] = fr.dome_z - self.right_length * 1.1 - 2 * self.bump_mm
        return lo, hi

    def distance(self, x, y, z):
        fr = self.frame
        w, a, b = (float(d[0]) for d in self.cavity.dims(np.array([fr.dome_z - 0.4 * self.right_length])))
        uh = (x - np.float32(fr.cx)) / np.float32(w)
        v = y - np.float32(fr.cy)
        vh = v / np.where(v >= 0, np.float32(a), np.float32(b))
        t = fr.t(z)
        top = self.diaphragm.height(x, y) - np.float32(4.0)  # the diaphragm's own muscle sits on top
        lateral = np.clip((uh + 0.35) / 0.85, 0, 1)
        lateral = lateral * lateral * (3 - 2 * lateral)
        front = np.clip((vh - 0.0) / 0.9, 0, 1)
        bottom = -self.right_length * (0.55 + 0.45 * lateral) * (1 - self.front_rise * front)
        # The left lobe thins toward its tip and lies in front of the stomach.
        thin = np.clip((uh - self.left_tip) / (0.1 - self.left_tip), 0, 1)
        # (Right of the midline the cap lifts off quickly: the right lobe's depth is ``right_length``'s.)
        cap = 12.0 + (self.left_thickness - 12.0) * thin + 600.0 * np.maximum(uh - 0.05, 0)
        bottom = np.maximum(bottom, top - cap)
        behind = -0.85 + np.clip(0.2 - uh, 0, None) * 2.4  # posterior limit (fraction of the depth), left side
        cavity = self.cavity.distance(x, y, z)
        d = np.maximum(bottom - t, (np.float32(self.left_tip) - uh) * np.float32(w))
        d = np.maximum(d, (behind - vh) * np.float32(b))
        d = np.maximum(d, cavity + np.float32(2.0))
        d = np.minimum(d, np.maximum(self.caudate.distance(x, y, z), cavity))
        d += np.float32(self.bump_mm) * self.bumps.sample(x.ravel(), y.ravel(), z.ravel())
        # The top is the diaphragm itself, never bumped through it: no liver above the diaphragm.
        return np.maximum(d, t - top).astype(np.float32)
