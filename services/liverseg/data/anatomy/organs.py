"""One synthetic patient's anatomy: every structure, where it is, what it is made of, in painting order.

``draw_patient`` draws the body (frame, fat, outline, diaphragm) and ``build_structures`` the organs in it, all as
world-space shapes (see ``body`` for the coordinates). Positions and sizes are those of anatomy atlases for an
adult (liver 1.0–2.5 l with its right lobe under the right dome, spleen 150–300 ml posterolateral on the left,
kidneys 11 cm long beside the spine at T12–L3 with the right one lower, pancreas across L1–L2, aorta left of and
IVC right of the midline, bowel filling the lower abdomen inside the colon's frame), scaled per patient and
moved by random amounts that keep the neighbours' order. Every structure that shares the liver's HU range in
some phase is present where it really is: heart, muscle, spleen, kidneys, stomach wall, bowel, pancreas, vessels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from liverseg.data.anatomy.body import APEX_T, AboveDiaphragm, Diaphragm, Frame, Liver, Rib, Section, Torso
from liverseg.data.anatomy.fields import LatticeField
from liverseg.data.anatomy.render import Structure
from liverseg.data.anatomy.shapes import (
    Bumpy,
    Ellipsoid,
    HalfSpace,
    Intersection,
    Shape,
    Shell,
    Tube,
    Union,
    axis_rotation,
)
from liverseg.data.anatomy.tissues import Palette
from liverseg.data.phantom import LIVER, TUMOUR, rotation

__all__ = ["Patient", "build_structures", "draw_patient"]

# Vertebral levels, t (mm, reference adult) of each body's centre: T1..T12 25 mm apart with T10 at the dome,
# L1..L5 36 mm apart; sacrum below.
THORACIC_T = [(10 - k) * 25.0 for k in range(1, 13)]
LUMBAR_T = [-80.5 - 36.0 * k for k in range(5)]


@dataclass
class Patient:
    """The body every organ is placed in. Sizes in mm (already scaled), see ``draw_patient``."""

    frame: Frame
    torso: Torso
    skin: Section
    fat: Section
    wall: Section
    cavity: Section
    diaphragm: Diaphragm
    spine_v: float        # v of the vertebral bodies' centres
    vertebra_r: float     # lumbar vertebral body radius
    arms: bool
    female: bool
    extent: tuple[np.ndarray, np.ndarray]  # world box covering the whole patient (for fields)

    @property
    def s(self) -> float:
        return self.frame.f

    @property
    def h(self) -> float:
        return self.frame.h

    def cavity_dims(self, t: float) -> tuple[float, float, float]:
        """Cavity half-width, front and back half-depth (mm) at height ``t``."""
        w, a, b = self.cavity.dims(np.array([self.frame.dome_z + t], dtype=np.float32))
        return float(w[0]), float(a[0]), float(b[0])

    def body_half_width(self) -> float:
        """Widest half-width of the outline, arms included (mm): what a field of view must hold."""
        w = float(self.skin.dims(np.array([self.frame.dome_z - 150 * self.h], dtype=np.float32))[0][0])
        return w + (2 * 50 * self.s + 20 if self.arms else 0.0)


def draw_patient(rng: np.random.Generator) -> Patient:
    """Draw a patient's frame, fat, outline and diaphragm (organs come from ``build_structures``)."""
    f = float(rng.uniform(0.86, 1.14))
    h = float(np.clip(f * rng.uniform(0.93, 1.07), 0.84, 1.16))
    frame = Frame(cx=float(rng.uniform(-30, 30)), cy=float(rng.uniform(-120, 40)),
                  dome_z=float(rng.uniform(-400, 600)), f=f, h=h)
    visceral = float(rng.beta(1.6, 2.4))       # 0 lean .. 1 much visceral fat
    subcut = float(rng.uniform(5, 42))          # mm of subcutaneous fat at the flank
    # The cavity inside the muscle wall; its back lies behind the kidneys, the spine stands in it.
    cav_w = f * (126 + 24 * visceral)
    cav_a = f * (80 + 36 * visceral)
    cav_b = f * (92 + 6 * visceral)
    m_side, m_front, m_back = f * rng.uniform(9, 15), f * rng.uniform(8, 13), f * rng.uniform(9, 14)
    vertebra_r = f * rng.uniform(20, 24)
    fat_side, fat_front, fat_back = subcut, subcut * rng.uniform(0.9, 1.4), subcut * rng.uniform(0.4, 0.7)
    skin = 2.0
    # Fields must cover the body wherever the scan puts it: a generous box around the frame.
    reach = np.array([400.0, 400.0, 700.0])
    centre = np.array([frame.cx, frame.cy, frame.dome_z])
    torso = Torso(frame, half_width=cav_w + m_side + fat_side + skin, front=cav_a + m_front + fat_front + skin,
                  back=cav_b + m_back + fat_back + skin, jitter=rng.uniform(0.96, 1.04, size=(9, 3)),
                  exponent=float(rng.uniform(2.0, 2.6)), belly=float(visceral * rng.uniform(0.0, 0.25)),
                  wobble=LatticeField(rng, centre - reach, centre + reach, 45.0),
                  wobble_mm=float(rng.uniform(1.5, 4.0)))
    fat = torso.section((skin, skin, skin))
    wall = torso.section((skin + fat_side, skin + fat_front, skin + fat_back))
    cavity = torso.section((skin + fat_side + m_side, skin + fat_front + m_front, skin + fat_back + m_back),
                           narrowing=True)
    lo, hi = torso.section((0, 0, 0)).bounds()
    pad = 160.0  # arms, table and the fields' margins
    extent = (lo - pad, hi + pad)
    diaphragm = Diaphragm(frame, cavity, left_drop=float(rng.uniform(5, 30) * h),
                          falls=tuple(float(x) for x in np.array([85, 22, 55, 105]) * h * rng.uniform(0.8, 1.2, 4)),
                          tendon_drop=float(rng.uniform(12, 28) * h),
                          ripple=LatticeField(rng, extent[0], extent[1], 60.0), ripple_mm=float(rng.uniform(2, 6)))
    return Patient(frame=frame, torso=torso, skin=torso.section((0, 0, 0)), fat=fat, wall=wall, cavity=cavity,
                   diaphragm=diaphragm, spine_v=-cav_b + 58 * f, vertebra_r=vertebra_r,
                   arms=bool(rng.random() < 0.15), female=bool(rng.random() < 0.5), extent=extent)


class _Builder:
    """Builds the structure list; one method per system, called in painting order."""

    def __init__(self, rng: np.random.Generator, patient: Patient, palette: Palette):
        self.rng, self.pt, self.pal = rng, patient, palette
        self.fr, self.s, self.h = patient.frame, patient.s, patient.h
        self.out: list[Structure] = []
        lo, hi = patient.extent
        self.fine = LatticeField(rng, lo, hi, 7.0)      # shared fine texture of soft tissues
        self.coarse = LatticeField(rng, lo, hi, 35.0)   # slow enhancement inhomogeneity
        self.below = AboveDiaphragm(patient.diaphragm, patient.extent, offset=-4.0, above=False)
        self.above = AboveDiaphragm(patient.diaphragm, patient.extent, offset=0.0, above=True)
        self.liver_shape: Shape | None = None

    # -- helpers -----------------------------------------------------------------------------------------
    def p(self, u: float, v: float, t: float) -> np.ndarray:
        """World point from body mm already scaled (use ``self.s`` and ``self.h``)."""
        return self.fr.p(u, v, t)

    def jitter(self, mm: float) -> np.ndarray:
        return self.rng.uniform(-mm, mm, size=3)

    def add(self, name: str, shape: Shape, tissue: str | float, texture: float = 3.0, label: int | None = None,
            only: str | None = None, field: LatticeField | None = None) -> None:
        hu = self.pal[tissue] if isinstance(tissue, str) else float(tissue)
        tex = ((field or self.fine, texture),) if texture else ()
        self.out.append(Structure(name, shape, hu, tex, label, only))

    def abdominal(self, shape: Shape) -> Shape:
        """Kept below the diaphragm and inside the cavity."""
        return Intersection([shape, self.below, self.pt.cavity])

    def tube(self, points, radii, jitter_mm: float = 0.0) -> Tube:
        pts = np.array([self.p(*q) for q in points], dtype=np.float64)
        if jitter_mm:
            pts[1:-1] += self.rng.uniform(-jitter_mm, jitter_mm, size=pts[1:-1].shape)
        return Tube(pts, np.asarray(radii, dtype=np.float64))

    def sv(self, k: float) -> float:
        """v just in front of the vertebral bodies plus ``k`` mm (scaled)."""
        return self.pt.spine_v + self.pt.vertebra_r + k * self.s

    # -- outside the body ----------------------------------------------------------------------------------
    def table(self) -> None:
        lo, hi = self.pt.extent
        back = self.fr.cy - self.pt.torso.back * 1.02
        top = back - self.rng.uniform(3, 30)
        radius = self.rng.uniform(700, 1400)
        span = self.rng.uniform(190, 240)
        # Most scans show the table top; some also its lower plate.
        plates = [(0.0, self.rng.uniform(2, 4)), (self.rng.uniform(30, 70), self.rng.uniform(2, 5))]
        shown = plates[:int(self.rng.choice([0, 1, 2], p=[0.2, 0.4, 0.4]))]
        for depth, thick in shown:
            centre_y = top - depth + radius
            cyl = Tube(np.array([[self.fr.cx, centre_y, lo[2]], [self.fr.cx, centre_y, hi[2]]]),
                       np.array([radius, radius]))
            box = (np.array([self.fr.cx - span, top - depth - 80, lo[2]]),
                   np.array([self.fr.cx + span, top - depth + 30, hi[2]]))
            sides = Intersection([HalfSpace(np.array([self.fr.cx + span, 0, 0]), np.array([1.0, 0, 0]), box),
                                  HalfSpace(np.array([self.fr.cx - span, 0, 0]), np.array([-1.0, 0, 0]), box)])
            self.add("table", Intersection([Shell(Intersection([cyl, sides]), thick), sides]), "table", 0)

    def arms(self) -> None:
        if not self.pt.arms:
            return
        s, h = self.s, self.h
        w = self.pt.skin.dims(np.array([self.fr.dome_z - 100 * h], dtype=np.float32))[0][0]
        r = 45 * s * self.rng.uniform(0.85, 1.15)
        for side in (1, -1):
            u = side * (w + 12 + r)
            pts = [(u, -10 * s, 300 * h), (u * 1.02, 0, 50 * h), (u * 1.05, 10 * s, -250 * h)]
            self.add("arm fat", self.tube(pts, [r] * 3), "fat", 0)
            self.add("arm muscle", self.tube(pts, [r - 9 * s] * 3), "muscle", 3)
            bone = [(u, -10 * s, 300 * h), (u * 1.02, 0, -110 * h)]
            self.add("humerus", self.tube(bone, [12 * s, 11 * s]), "cortical", 0)
            self.add("humerus marrow", self.tube(bone, [8 * s, 7 * s]), "cancellous", 0)
            fore = [(u * 1.03 + 8 * s, 5 * s, -120 * h), (u * 1.05 + 8 * s, 10 * s, -250 * h)]
            self.add("radius", self.tube(fore, [6 * s] * 2), "cortical", 0)

    def breasts(self) -> None:
        if not self.pt.female:
            return
        s, h = self.s, self.h
        w, a, _ = (float(d[0]) for d in self.pt.skin.dims(np.array([self.fr.dome_z + 90 * h], dtype=np.float32)))
        size = self.rng.uniform(0.5, 1.3)
        for side in (1, -1):
            c = self.p(side * 0.45 * w, a - 15 * s, 90 * h + self.rng.uniform(-15, 15))
            breast = Ellipsoid(c, np.array([55, 45, 55]) * s * size)
            self.add("breast", breast, "fat", 0)
            gland = Ellipsoid(c + np.array([0, 10 * s, 0]), np.array([35, 25, 35]) * s * size)
            self.add("breast gland", gland, self.pal["soft_tissue"] - 60, 25)

    # -- the trunk's layers --------------------------------------------------------------------------------
    def layers(self) -> None:
        pt = self.pt
        self.add("skin", pt.skin, "skin", 0)
        self.add("subcutaneous fat", pt.fat, "fat", 4)
        self.add("muscle wall", pt.wall, "muscle", 3)
        # The fascial plane between the flat abdominal muscles.
        self.add("fascia", Intersection([Shell(pt.torso.section(_mid(pt.wall.inset, pt.cavity.inset)), 1.5),
                                         HalfSpace(self.p(0, 0, -10 * self.h), np.array([0, 0, 1.0]),
                                                   pt.extent)]), "fat", 0)
        self.add("visceral fat", pt.cavity, "visceral_fat", 8)
        top = HalfSpace(self.p(0, 0, APEX_T * self.h), np.array([0, 0, 1.0]), pt.extent)
        self.add("lungs", Intersection([pt.cavity, self.above, top]), "lung", 25, field=self.coarse)

    # -- chest -------------------------------------------------------------------------------------------
    def mediastinum(self) -> None:
        s, h = self.s, self.h
        chest = Intersection([self.pt.cavity, self.above])
        column = self.tube([(0, self.sv(45), 60 * h), (0, self.sv(30), 330 * h)], [38 * s, 30 * s])
        back = self.tube([(-6 * s, self.sv(8), -20 * h), (-3 * s, self.sv(8), 330 * h)], [24 * s, 20 * s])
        self.add("mediastinal fat", Intersection([Union([column, back]), chest]), "visceral_fat", 6)
        # Heart: long axis toward the left, front and down; it rests on the diaphragm's central tendon.
        axis = np.array([-0.55, 0.45, -0.7])
        radii = np.array([56, 48, 72]) * s * self.rng.uniform(0.9, 1.12, 3)  # 0.7-1.1 l with its blood
        tu, tv = self.pt.diaphragm.tendon()
        uh, vh = tu - 10 * s + self.rng.uniform(-8, 8), tv - 15 * s + self.rng.uniform(-8, 8)
        # The heart rests on the central tendon: its ellipsoid reaches 12 mm below it and is cut flat there.
        base = float(self.pt.diaphragm.height(np.array([[[self.fr.cx + uh]]], np.float32),
                                              np.array([[[self.fr.cy + vh]]], np.float32)).ravel()[0]) - 12 * h
        rot = axis_rotation(axis)
        _lo, hi = Ellipsoid(np.zeros(3), radii, rot).bounds()
        centre = self.p(uh, vh, base + 0.9 * hi[2])
        # Epicardial fat: patchy, often none between the heart and the diaphragm.
        fat_pad = self.rng.uniform(0, 10) * s
        heart = Ellipsoid(centre, radii, rot)
        lo_, hi_ = self.pt.extent
        patches = _Level(LatticeField(self.rng, lo_, hi_, 30.0), float(self.rng.uniform(-0.5, 1.0)), self.pt.extent)
        self.add("pericardial fat", Intersection([Ellipsoid(centre, radii + fat_pad, rot), chest, patches]), "fat", 4)
        self.add("myocardium", Intersection([heart, chest]), "myocardium", 4)
        self.heart_centre = centre
        lv = Ellipsoid(centre + rot @ np.array([-8, -6, -12]) * s, radii * np.array([0.45, 0.45, 0.62]), rot)
        rv = Ellipsoid(centre + rot @ np.array([14, 16, -6]) * s, radii * np.array([0.32, 0.5, 0.55]), rot)
        la = Ellipsoid(centre + np.array([-8 * s, -30 * s, 28 * h]), np.array([26, 18, 20]) * s)
        ra = Ellipsoid(centre + np.array([38 * s, -2 * s, 12 * h]), np.array([22, 22, 26]) * s)
        for name, shape, tissue in (("left ventricle", lv, "artery"), ("right ventricle", rv, "right_heart"),
                                    ("left atrium", la, "artery"), ("right atrium", ra, "right_heart")):
            self.add(name, Intersection([shape, chest]), tissue, 3)
        self.ra_centre = ra.centre
        # Great vessels.
        up = centre + rot @ np.array([4, 6, 0]) * s
        u0, v0, t0 = up[0] - self.fr.cx, up[1] - self.fr.cy, up[2] - self.fr.dome_z
        self.add("ascending aorta and arch", self.tube(
            [(u0, v0, t0), (16 * s, self.sv(62), 105 * h), (4 * s, self.sv(50), 160 * h), (-20 * s, self.sv(22),
             150 * h), (-22 * s, self.sv(10), 90 * h), (-16 * s, self.sv(10), -35 * h)],
            [15 * s, 15 * s, 13 * s, 12 * s, 12 * s, 11 * s]), "artery", 2)
        pa = centre + rot @ np.array([8, 28, 10]) * s
        pu, pv, ptt = pa[0] - self.fr.cx, pa[1] - self.fr.cy, pa[2] - self.fr.dome_z
        self.add("pulmonary trunk", self.tube([(pu, pv, ptt), (-14 * s, self.sv(50), 105 * h),
                                               (-62 * s, self.sv(32), 108 * h)], [14 * s, 12 * s, 9 * s]),
                 "right_heart", 2)
        self.add("right pulmonary artery", self.tube([(-14 * s, self.sv(50), 105 * h), (58 * s, self.sv(32),
                                                                                        112 * h)], [11 * s, 8 * s]),
                 "right_heart", 2)
        ra_u, ra_v = self.ra_centre[0] - self.fr.cx, self.ra_centre[1] - self.fr.cy
        self.add("superior vena cava", self.tube([(ra_u, ra_v, self.ra_centre[2] - self.fr.dome_z),
                                                  (30 * s, self.sv(55), 150 * h), (26 * s, self.sv(45), 330 * h)],
                                                 [11 * s, 9 * s, 9 * s]), "right_heart", 2)
        airway = [(0, self.sv(32), 340 * h), (0, self.sv(30), 132 * h)]
        for side in (1, -1):
            bronchus = [(0, self.sv(30), 132 * h), (side * 55 * s, self.sv(30), 100 * h)]
            self.add("bronchus wall", self.tube(bronchus, [8 * s, 6 * s]), "soft_tissue", 0)
            self.add("bronchus", self.tube(bronchus, [6 * s, 4.5 * s]), "air", 0)
        self.add("trachea wall", self.tube(airway, [11 * s] * 2), "soft_tissue", 0)
        self.add("trachea", self.tube(airway, [9 * s] * 2), "air", 0)
        gej = (-48 * s, self.sv(28), -32 * h)
        esophagus = [(-4 * s, self.sv(12), 340 * h), (-10 * s, self.sv(14), 40 * h), gej]
        self.add("esophagus", self.tube(esophagus, [9 * s, 9 * s, 10 * s]), "bowel_wall", 3)
        if self.rng.random() < 0.4:
            self.add("esophageal air", self.tube(esophagus[:2], [3 * s] * 2), "gas", 0)

    def lung_vessels(self) -> None:
        lo, hi = self.pt.extent
        f1, f2 = (LatticeField(self.rng, lo, hi, 26.0) for _ in range(2))
        blood = (self.pal["artery"] + self.pal["right_heart"]) / 2
        chest = (lo.copy(), hi.copy())
        chest[0][2] = self.fr.dome_z - 130 * self.h  # the costophrenic recesses' lowest point
        self.add("lung vessels", Intersection([_Network(f1, f2, 2.4, 26.0, chest), self.above]), blood, 0,
                 only="lung")

    def diaphragm_muscle(self) -> None:
        sheet = Intersection([AboveDiaphragm(self.pt.diaphragm, self.pt.extent, offset=-4.5), self.pt.cavity,
                              AboveDiaphragm(self.pt.diaphragm, self.pt.extent, offset=0.5, above=False)])
        self.add("diaphragm", sheet, "muscle", 2)

    # -- liver -------------------------------------------------------------------------------------------
    def liver(self) -> None:
        rng, s, h = self.rng, self.s, self.h
        lo, hi = self.pt.extent
        big = rng.random() < 0.15       # hepatomegaly
        cirrhotic = rng.random() < 0.08
        length = rng.uniform(125, 172) * h * (1.2 if big else 1.0) * (0.85 if cirrhotic else 1.0)
        caudate_r = np.array([20, 18, 30]) * s * rng.uniform(0.85, 1.15) * (1.35 if cirrhotic else 1.0)
        caudate = Ellipsoid(self.p(6 * s, self.sv(44), -48 * h) + self.jitter(5), caudate_r)
        liver = Liver(self.fr, self.pt.cavity, self.pt.diaphragm, right_length=length,
                      left_tip=float(rng.uniform(-0.75, -0.25) - (0.1 if big else 0.0)),
                      left_thickness=float(rng.uniform(40, 75) * s * (1.2 if big else 1.0)),
                      front_rise=float(rng.uniform(0.2, 0.5)), caudate=caudate,
                      bumps=LatticeField(rng, lo, hi, 22.0 if cirrhotic else 55.0),
                      bump_mm=float(rng.uniform(9, 13) if cirrhotic else rng.uniform(3, 9)))
        self.liver_shape = liver
        self.cirrhotic = cirrhotic
        texture = LatticeField(rng, lo, hi, 5.0)
        self.out.append(Structure("liver", liver, self.pal["liver"],
                                  ((texture, float(rng.uniform(2, 6))), (self.coarse, float(rng.uniform(2, 7)))),
                                  LIVER))
        # Small vessels everywhere in the parenchyma, then the named veins.
        f1, f2 = (LatticeField(rng, lo, hi, 30.0) for _ in range(2))
        small = (self.pal["hepatic_vein"] + self.pal["portal_vein"]) / 2
        self.add("liver vessels", _Network(f1, f2, float(rng.uniform(1.5, 2.6)), 30.0, liver.bounds()), small, 0,
                 label=LIVER, only="liver")
        w, a, _b = self.pt.cavity_dims(-60 * h)
        top = (20 * s, self.sv(32), -12 * h)
        for end in ((0.72 * w, self.sv(5), -65 * h), (0.22 * w, 0.42 * a, -75 * h), (-0.25 * w, 0.35 * a, -35 * h)):
            self.add("hepatic vein", self.tube([top, end], [6 * s, 2.2 * s], 0), "hepatic_vein", 2, label=LIVER,
                     only="liver")
        self.porta = (38 * s, self.sv(50), -72 * h)
        for path in ([self.porta, (0.5 * w, self.sv(40), -78 * h), (0.78 * w, self.sv(25), -95 * h)],
                     [self.porta, (0.45 * w, self.sv(70), -70 * h), (0.7 * w, 0.5 * a, -85 * h)],
                     [self.porta, (-0.02 * w, 0.18 * a, -62 * h), (-0.22 * w, 0.45 * a, -58 * h)]):
            self.add("portal branch", self.tube(path, [6 * s, 4.5 * s, 2.5 * s], 6), "portal_vein", 2, label=LIVER,
                     only="liver")

    def liver_lesions(self) -> None:
        rng = self.rng
        count = int(rng.choice([0, 0, 0, 1, 1, 2, 3, 4, 6, 9]))
        kind = str(rng.choice(["tumour_hypo", "tumour_hypo", "tumour_hyper"]))
        for _ in range(count):
            centre = self._inside_liver(depth_mm=5.0)
            if centre is None:
                break
            r = float(np.exp(rng.uniform(np.log(5), np.log(45)))) * rng.uniform(0.8, 1.2, 3)
            lesion = Bumpy(Ellipsoid(centre, r, rotation(rng, 90)), LatticeField(rng, centre - 60, centre + 60, 12.0),
                           float(min(r) * 0.12))
            self.add("tumour", lesion, kind, float(rng.uniform(3, 10)), label=TUMOUR, only="liver")
            if r.min() > 12 and rng.random() < 0.4:  # a necrotic centre or an enhancing rim
                self.add("tumour core", Ellipsoid(centre, r * 0.55), self.pal[kind] - rng.uniform(10, 40), 5,
                         label=TUMOUR, only="liver")
        for _ in range(int(rng.choice([0, 0, 0, 1, 2]))):  # benign cysts: liver in the label, as in MSD
            centre = self._inside_liver(depth_mm=4.0)
            if centre is not None:
                self.add("cyst", Ellipsoid(centre, rng.uniform(4, 14) * rng.uniform(0.9, 1.1, 3)), "cyst", 0,
                         label=LIVER, only="liver")

    def _inside_liver(self, depth_mm: float) -> np.ndarray | None:
        lo, hi = self.liver_shape.bounds()
        for _ in range(200):
            p = self.rng.uniform(lo, hi)
            d = self.liver_shape.distance(*(np.array([[[c]]], dtype=np.float32) for c in p))
            if float(d.ravel()[0]) < -depth_mm:
                return p
        return None

    # -- upper abdomen -------------------------------------------------------------------------------------
    def upper_abdomen(self) -> None:
        rng, s, h = self.rng, self.s, self.h
        w, a, b = self.pt.cavity_dims(-80 * h)
        # Gallbladder in its fossa under the liver (absent after cholecystectomy).
        if rng.random() < 0.87:
            gb = Ellipsoid(self.p(0.25 * w, 0.33 * a, -92 * h) + self.jitter(10),
                           np.array([17, 17, 40]) * s * rng.uniform(0.6, 1.25, 3), axis_rotation([0.25, 0.6, -0.75]))
            gb = self.abdominal(gb)
            self.add("gallbladder wall", gb, "bowel_wall", 0, label=0)
            self.add("bile", Intersection([gb, _Inset(gb, 2.0)]), "bile", 0, label=0)
        ivc_top = (20 * s, self.sv(34), 2 * h)
        ra = tuple(self.ra_centre - np.array([self.fr.cx, self.fr.cy, self.fr.dome_z]))
        self.add("inferior vena cava", self.tube([(22 * s, self.sv(8), -125 * h), (22 * s, self.sv(12), -80 * h),
                                                  (18 * s, self.sv(28), -30 * h), ivc_top, ra],
                                                 [11 * s, 12 * s, 12 * s, 13 * s, 13 * s]), "ivc_upper", 2, label=0)
        self.add("inferior vena cava (infrarenal)", self.tube([(18 * s, self.sv(6), -250 * h),
                                                               (22 * s, self.sv(8), -125 * h)], [11 * s, 11 * s]),
                 "ivc_lower", 2, label=0)
        confluence = (8 * s, self.sv(44), -108 * h)
        self.add("portal vein", self.tube([confluence, self.porta], [8 * s, 7 * s]), "portal_vein", 2, label=0)
        self.add("superior mesenteric vein", self.tube([confluence, (12 * s, self.sv(52), -215 * h)], [6 * s, 5 * s],
                                                       6), "portal_vein", 2, label=0)
        spleen_c = self.p(-(w - 30 * s), -0.4 * b, -58 * h) + self.jitter(8)
        hilum = spleen_c - np.array([self.fr.cx, self.fr.cy, self.fr.dome_z]) + np.array([32 * s, 25 * s, -5])
        self.add("splenic vein", self.tube([confluence, (-35 * s, self.sv(30), -98 * h), tuple(hilum)],
                                           [5 * s, 5 * s, 4 * s], 5), "portal_vein", 1, label=0)
        self.stomach(w, a, b)
        size = rng.uniform(0.8, 1.2) * (1.45 if rng.random() < 0.08 else 1.0)
        spleen = Bumpy(Ellipsoid(spleen_c, np.array([22, 44, 55]) * s * size * rng.uniform(0.9, 1.1, 3),
                                 axis_rotation([-0.2, -0.45, 0.87]) @ rotation(rng, 10)),
                       LatticeField(rng, spleen_c - 120, spleen_c + 120, 40.0), 3.0)
        arterial = self.pal.phase == "arterial"
        self.add("spleen", self.abdominal(spleen), "spleen", 28 if arterial else 3, label=0,
                 field=LatticeField(rng, spleen_c - 120, spleen_c + 120, 14.0) if arterial else None)
        self.kidneys()
        self.add("pancreas", self.abdominal(Bumpy(self.tube(
            [(38 * s, self.sv(40), -130 * h), (8 * s, self.sv(60), -112 * h), (-30 * s, self.sv(48), -100 * h),
             (-70 * s, self.sv(28), -86 * h), tuple(hilum - np.array([8 * s, 0, 0]))],
            np.array([16, 11, 11, 10, 8]) * s * rng.uniform(0.75, 1.2), 5), self.fine, 2.0)), "pancreas", 5, label=0)
        self.bowel_tube("duodenum", [(0.15 * w, 0.28 * a, -104 * h), (48 * s, self.sv(52), -112 * h),
                                     (60 * s, self.sv(36), -122 * h), (62 * s, self.sv(34), -168 * h),
                                     (10 * s, self.sv(26), -182 * h), (-25 * s, self.sv(28), -176 * h),
                                     (-36 * s, self.sv(42), -150 * h)], 12 * s, jitter=5)

    def stomach(self, w: float, a: float, b: float) -> None:
        rng, s, h = self.rng, self.s, self.h
        full = rng.uniform(0.45, 1.25)
        path = [(-0.48 * w, self.sv(22), -30 * h), (-0.55 * w, 0.0, -68 * h), (-0.42 * w, 0.33 * a, -112 * h),
                (-0.05 * w, 0.5 * a, -120 * h), (0.15 * w, 0.28 * a, -104 * h)]
        radii = np.array([38 * full, 36 * full, 30 * full, 22 * full, 10]) * s
        self.bowel_tube("stomach", path, radii, jitter=8, wall=float(rng.uniform(3, 6) + 4 * (1.25 - full)),
                        contents=str(rng.choice(["gas_fluid", "food", "contrast", "collapsed"], p=[0.5, 0.25, 0.1,
                                                                                              0.15])))

    def kidneys(self) -> None:
        rng, s, h = self.rng, self.s, self.h
        for side, t in ((1, -128 * h), (-1, -112 * h)):
            c = self.p(side * 62 * s, self.pt.spine_v - 2 * s, t + rng.uniform(-12, 12)) + self.jitter(5)
            r = np.array([25, 23, 52]) * s * rng.uniform(0.85, 1.15, 3)
            rot = axis_rotation([-side * 0.22, -0.15, 1.0]) @ rotation(rng, (5, 5, 15))
            kidney = self.abdominal(Ellipsoid(c, r, rot))
            self.add("kidney cortex", kidney, "kidney_cortex", 4, label=0)
            self.add("kidney medulla", Intersection([kidney, Ellipsoid(c, r * 0.62, rot)]), "kidney_medulla", 8,
                     label=0)
            hilum = c + np.array([-side * 0.6 * r[0], 0.25 * r[1], 0])
            self.add("renal sinus fat", Ellipsoid(hilum, np.array([11, 9, 26]) * s, rot), "fat", 3, label=0)
            self.add("renal pelvis", Ellipsoid(hilum + np.array([-side * 4 * s, 0, 0]), np.array([7, 6, 14]) * s),
                     "urine", 0, label=0)
            if rng.random() < 0.15:
                cyst_c = c + rot @ (r * rng.uniform(-0.6, 0.6, 3))
                self.add("renal cyst", Ellipsoid(cyst_c, rng.uniform(6, 22) * np.ones(3)), "cyst", 0, label=0)
            ivc_u = 22 * s
            h_u, h_v, h_t = (hilum - np.array([self.fr.cx, self.fr.cy, self.fr.dome_z]))
            end = (ivc_u, self.sv(10), h_t + 10 * h)
            via = [(-10 * s, self.sv(30), h_t + 12 * h)] if side < 0 else []  # the left vein crosses the aorta
            self.add("renal vein", self.tube([(h_u, h_v, h_t), *via, end], [5 * s] * (2 + len(via))), "ivc_upper", 2,
                     label=0)

    # -- bowel -------------------------------------------------------------------------------------------
    def bowel_tube(self, name: str, path, radii, jitter: float = 10.0, wall: float | None = None,
                   contents: str | None = None) -> None:
        """A hollow viscus: wall, then contents (fluid, gas floating on top, food, contrast or faeces)."""
        rng = self.rng
        radii = np.broadcast_to(np.asarray(radii, dtype=np.float64), (len(path),)).copy()
        outer = self.tube(path, radii, jitter)
        wall = wall if wall is not None else float(rng.uniform(2, 4))
        contents = contents or str(rng.choice(["gas_fluid", "faeces", "contrast", "collapsed"],
                                              p=[0.45, 0.35, 0.08, 0.12]))
        shape = self.abdominal(Bumpy(outer, self.fine, 1.5))
        self.add(f"{name} wall", shape, "bowel_wall", 4, label=0)
        if contents == "collapsed":
            return
        lumen = self.abdominal(Tube(outer.points, np.maximum(outer.radii - wall, 1.0)))
        fill = {"gas_fluid": "bowel_fluid", "faeces": "feces", "contrast": "oral_contrast",
                "food": "stomach_food"}[contents]
        self.add(f"{name} contents", lumen, fill, 25 if contents in ("faeces", "food") else 3, label=0)
        if contents in ("gas_fluid", "faeces", "food"):
            # Gas rises to the front of a supine patient: a level across the lumen, higher in some loops.
            level = float(np.mean(outer.points[:, 1]) + rng.uniform(-0.2, 0.9) * np.mean(outer.radii))
            lo, hi = outer.bounds()
            gas = Intersection([lumen, HalfSpace(np.array([0, level, 0]), np.array([0, -1.0, 0]), (lo, hi))])
            self.add(f"{name} gas", gas, "gas", 0, label=0)

    def colon(self) -> None:
        rng, s, h = self.rng, self.s, self.h
        w, a, b = self.pt.cavity_dims(-180 * h)
        sag = rng.uniform(-230, -130) * h
        path = [(0.55 * w, 0.05 * a, -300 * h), (0.68 * w, -0.25 * b, -230 * h), (0.66 * w, -0.2 * b, -150 * h),
                (0.5 * w, 0.2 * a, -120 * h), (0.2 * w, 0.6 * a, sag), (-0.25 * w, 0.6 * a, sag + 10 * h),
                (-0.62 * w, 0.0, -80 * h), (-0.72 * w, -0.3 * b, -150 * h), (-0.68 * w, -0.2 * b, -260 * h),
                (-0.3 * w, 0.15 * a, -330 * h), (0.0, self.sv(-5), -370 * h), (0.0, self.sv(-15), -460 * h)]
        radii = np.array([30, 24, 24, 24, 22, 22, 20, 18, 18, 17, 20, 22]) * s * rng.uniform(0.75, 1.2)
        self.bowel_tube("colon", path, radii, jitter=12 * s)

    def small_bowel(self) -> None:
        rng, s, h = self.rng, self.s, self.h
        lo, hi = self.pt.extent
        w, a, _b = self.pt.cavity_dims(-230 * h)
        region = self.abdominal(Ellipsoid(self.p(-5 * s, 0.1 * a, -245 * h), np.array([0.62 * w, 0.75 * a, 125 * h])))
        spacing = 48.0 * s
        f1, f2 = (LatticeField(rng, lo, hi, spacing) for _ in range(2))
        r = float(rng.uniform(9, 14) * s)
        loops = Intersection([_Network(f1, f2, r, spacing, self.pt.extent), region])
        self.add("small bowel wall", loops, "bowel_wall", 4, label=0, only="not_liver")
        contents = str(rng.choice(["bowel_fluid", "oral_contrast"], p=[0.85, 0.15]))
        lumen = Intersection([_Network(f1, f2, r - 2.5 * s, spacing, self.pt.extent), region])
        self.add("small bowel contents", lumen, contents, 4, label=0, only="not_liver")
        gas = LatticeField(rng, lo, hi, 25.0)
        self.add("small bowel gas", Intersection([lumen, _Level(gas, float(rng.uniform(0.8, 1.8)), self.pt.extent)]),
                 "gas", 0, label=0, only="not_liver")

    def mesentery(self) -> None:
        lo, hi = self.pt.extent
        f1, f2 = (LatticeField(self.rng, lo, hi, 22.0) for _ in range(2))
        blood = (self.pal["artery"] + self.pal["portal_vein"]) / 2
        w, a, _b = self.pt.cavity_dims(-200 * self.h)
        region = Ellipsoid(self.p(0, 0.1 * a, -250 * self.h), np.array([0.8 * w, 0.9 * a, 200 * self.h]))
        self.add("mesenteric vessels", Intersection([_Network(f1, f2, 1.4, 22.0, region.bounds()), region]), blood,
                 0, only="fat")

    # -- retroperitoneum and muscles -------------------------------------------------------------------------
    def vessels(self) -> None:
        s, h = self.s, self.h
        self.add("abdominal aorta", self.tube([(-16 * s, self.sv(10), -35 * h), (-12 * s, self.sv(14), -120 * h),
                                               (-8 * s, self.sv(16), -212 * h)], [11 * s, 10 * s, 9 * s]), "artery",
                 2, label=0)
        for side in (1, -1):
            self.add("iliac artery", self.tube([(-8 * s, self.sv(16), -212 * h), (side * 40 * s, self.sv(14),
                                                -285 * h), (side * 72 * s, self.sv(45), -380 * h)],
                                               [6.5 * s, 6 * s, 5 * s]), "artery", 1, label=0)
            self.add("iliac vein", self.tube([(18 * s, self.sv(6), -250 * h), (side * 45 * s, self.sv(2), -300 * h),
                                              (side * 70 * s, self.sv(35), -390 * h)], [8 * s, 7 * s, 7 * s]),
                     "ivc_lower", 1, label=0)
        self.add("superior mesenteric artery", self.tube([(-10 * s, self.sv(24), -100 * h), (-4 * s, self.sv(40),
                                                          -130 * h), (0, self.sv(50), -220 * h)], [4 * s] * 3, 4),
                 "artery", 0, label=0)
        self.add("coeliac trunk", self.tube([(-12 * s, self.sv(22), -78 * h), (-8 * s, self.sv(40), -85 * h)],
                                            [4 * s] * 2), "artery", 0, label=0)

    def muscles(self) -> None:
        s, h = self.s, self.h
        sv, r = self.pt.spine_v, self.pt.vertebra_r
        for side in (1, -1):
            self.add("crus", self.tube([(side * 14 * s, sv + r + 6 * s, -20 * h), (side * 16 * s, sv + r * 0.6,
                                                                                    -100 * h)], [5 * s, 6 * s]),
                     "muscle", 2, label=0)
            self.add("psoas", self.tube(
                [(side * 22 * s, sv + 2 * s, -60 * h), (side * 36 * s, sv + 5 * s, -130 * h),
                 (side * 46 * s, sv + 12 * s, -200 * h), (side * 56 * s, sv + 26 * s, -270 * h),
                 (side * 66 * s, sv + 50 * s, -340 * h), (side * 80 * s, sv + 75 * s, -430 * h)],
                np.array([6, 15, 22, 24, 22, 18]) * s * self.rng.uniform(0.8, 1.2)), "muscle", 3, label=0)
            self.add("quadratus lumborum", self.tube(
                [(side * 50 * s, sv - 14 * s, -75 * h), (side * 60 * s, sv - 14 * s, -150 * h),
                 (side * 64 * s, sv - 8 * s, -220 * h)], np.array([8, 13, 10]) * s), "muscle", 3, label=0)
            self.add("iliacus", Ellipsoid(self.p(side * 78 * s, sv + 30 * s, -292 * h), np.array([18, 34, 48]) * s),
                     "muscle", 3, label=0)
            back = sv - r - 26 * s
            paraspinal = self.tube(
                [(side * 28 * s, back + 4 * s, 330 * h), (side * 32 * s, back, -40 * h),
                 (side * 35 * s, back - 2 * s, -200 * h), (side * 28 * s, back + 12 * s, -320 * h)],
                np.array([17, 23, 28, 18]) * s)
            self.add("paraspinal muscle", Intersection([paraspinal, self.pt.wall]), "muscle", 4, label=0)
            self.add("paraspinal fat streak", self.tube(
                [(side * 30 * s, back - 6 * s, 200 * h), (side * 34 * s, back - 8 * s, -200 * h)], [2 * s] * 2),
                "fat", 0, label=0)

    # -- skeleton ----------------------------------------------------------------------------------------
    def spine(self) -> None:
        s, h = self.s, self.h
        sv, r = self.pt.spine_v, self.pt.vertebra_r
        self.add("disc column", self.tube([(0, sv, 340 * h), (0, sv, -250 * h)], [0.72 * r, r]), "disc", 0,
                 label=0)
        levels = [(t, 0.7 + 0.012 * k, 10.5) for k, t in enumerate(THORACIC_T)] + \
                 [(t, 0.9 + 0.025 * k, 14.0) for k, t in enumerate(LUMBAR_T)]
        for t, scale, half in levels:
            rr = r * min(scale, 1.0)
            body = self.tube([(0, sv, (t + half) * h - rr * 0.15), (0, sv, (t - half) * h + rr * 0.15)],
                             [rr * 0.85, rr * 0.85])
            self.add("vertebral body", Intersection([Union([body]), _ZBand(self.fr, (t - half) * h, (t + half) * h)]),
                     "cortical", 0, label=0)
            inner = self.tube([(0, sv, (t + half - 1.5) * h), (0, sv, (t - half + 1.5) * h)], [rr * 0.78] * 2)
            self.add("vertebral marrow", Intersection([inner, _ZBand(self.fr, (t - half + 1.5) * h,
                                                                     (t + half - 1.5) * h)]), "cancellous", 8, label=0)
            canal_v = sv - rr - 10 * s
            self.add("vertebral arch", self.tube([(0, canal_v, (t + half) * h), (0, canal_v, (t - half) * h)],
                                                 [15 * s] * 2), "cancellous", 0, label=0)
            self.add("spinous process", self.tube([(0, canal_v - 10 * s, t * h), (0, canal_v - 42 * s,
                                                                                 (t - 14) * h)], [6 * s, 5 * s]),
                     "cancellous", 0, label=0)
            if t < -60 * h:
                for side in (1, -1):
                    self.add("transverse process", self.tube([(0, canal_v + 4 * s, t * h), (side * 42 * s,
                                                                                             canal_v, t * h)],
                                                             [6 * s, 4 * s]), "cancellous", 0, label=0)
        self.add("spinal canal", self.tube([(0, sv - r - 10 * s, 340 * h), (0, sv - r * 0.9 - 10 * s, -260 * h)],
                                           [9 * s] * 2), "csf", 0, label=0)

    def ribs(self) -> None:
        rng, h = self.rng, self.h
        drop = rng.uniform(110, 150) * h
        reach = [2.95] * 7 + [2.75, 2.55, 2.35, 1.75, 1.25]
        for k, t in enumerate(THORACIC_T):
            for side in (1, -1):
                cartilage_from = 2.2 if k < 10 else 9.0
                bone = Rib(self.pt.cavity, side, t * h + 8 * h + rng.uniform(-3, 3), drop * (0.8 + 0.03 * k),
                           min(reach[k], cartilage_from), height=10.0, thickness=8.0)
                # One bone tissue for cortex and marrow: at 10 x 8 mm both are above the network's window.
                self.add("rib", bone, (self.pal["cortical"] + self.pal["cancellous"]) / 2, 0, label=0)
                if reach[k] > cartilage_from:
                    self.add("costal cartilage", Rib(self.pt.cavity, side, bone.top_t, bone.drop, reach[k],
                                                     height=10.0, thickness=8.0), "cartilage", 0, label=0)

    def sternum_and_scapulae(self) -> None:
        s, h = self.s, self.h
        pts = []
        for t in (230 * h, 120 * h, 20 * h, -40 * h):
            _, a, _ = self.pt.cavity_dims(t)
            pts.append((0, a + 7 * s, t))
        self.add("sternum", self.tube(pts, [9 * s] * 4), "cortical", 0, label=0)
        self.add("sternal marrow", self.tube(pts, [6 * s] * 4), "cancellous", 0, label=0)
        for side in (1, -1):
            w, _, b = self.pt.cavity_dims(200 * h)
            c = self.p(side * 0.72 * w, -(b + 18 * s), 200 * h)
            blade = Ellipsoid(c, np.array([55 * s, 5 * s, 70 * h]), rotation(self.rng, (0, 0, 5)) @ _rot_z(
                -side * 0.45))
            self.add("scapula", Intersection([blade, self.pt.fat]), "cancellous", 0, label=0)
            pect = Ellipsoid(self.p(side * 0.5 * w, self.pt.cavity_dims(150 * h)[1] + 14 * s, 160 * h),
                             np.array([75 * s, 13 * s, 70 * h]))
            self.add("pectoralis", Intersection([pect, self.pt.fat]), "muscle", 3, label=0)

    def pelvis(self) -> None:
        rng, s, h = self.rng, self.s, self.h
        sv = self.pt.spine_v
        for side in (1, -1):
            # The wings flare out and up from the acetabula: the lower half of a shell, the greater pelvis' bowl.
            wing = Ellipsoid(self.p(side * 40 * s, sv + 18 * s, -225 * h), np.array([95, 62, 130]) * s)
            lateral = HalfSpace(self.p(side * 45 * s, 0, 0), np.array([-side * 1.0, 0, 0]), self.pt.extent)
            band = _ZBand(self.fr, -345 * h, -218 * h)
            front = HalfSpace(self.p(0, sv + 45 * s, 0), np.array([0, 1.0, 0]), self.pt.extent)
            self.add("iliac wing", Intersection([Shell(wing, 7 * s), lateral, band, front]), "cancellous", 0,
                     label=0)
            self.add("iliac cortex", Intersection([Shell(wing, 2 * s), lateral, band, front]), "cortical", 0,
                     label=0)
            head = self.p(side * 88 * s, sv + 72 * s, -410 * h)
            self.add("acetabulum", Shell(Ellipsoid(head + np.array([side * -4 * s, 0, 6 * h]),
                                                   np.array([32, 32, 30]) * s), 7 * s), "cancellous", 0, label=0)
            self.add("femoral head", Ellipsoid(head, np.array([24, 24, 24]) * s), "cancellous", 0, label=0)
            self.add("femoral neck", self.tube([(side * 88 * s, sv + 72 * s, -410 * h),
                                                (side * 112 * s, sv + 66 * s, -445 * h),
                                                (side * 110 * s, sv + 66 * s, -620 * h)], [15 * s, 17 * s, 14 * s]),
                     "cancellous", 0, label=0)
            _, a_p, _ = self.pt.cavity_dims(-420 * h)
            self.add("pubis", self.tube([(side * 12 * s, a_p - 8 * s, -432 * h), (side * 70 * s, sv + 80 * s,
                                                                                  -418 * h)], [10 * s, 12 * s]),
                     "cancellous", 0, label=0)
            self.add("ischium", self.tube([(side * 62 * s, sv + 50 * s, -425 * h), (side * 52 * s, sv + 25 * s,
                                                                                    -480 * h)], [15 * s, 13 * s]),
                     "cancellous", 0, label=0)
            self.add("gluteus", Intersection([Ellipsoid(self.p(side * 85 * s, sv - 40 * s, -390 * h),
                                                        np.array([62, 55, 100]) * s * rng.uniform(0.85, 1.15)),
                                              self.pt.fat]), "muscle", 3, label=0)
        sacrum = Ellipsoid(self.p(0, sv - 12 * s, -318 * h), np.array([46, 20, 68]) * s, _rot_x(-0.45))
        self.add("sacrum", Intersection([sacrum, _ZBand(self.fr, -400 * h, -250 * h)]), "cancellous", 6, label=0)

    def pelvic_organs(self) -> None:
        rng, s, h = self.rng, self.s, self.h
        _w, a, _b = self.pt.cavity_dims(-390 * h)
        c = self.p(0, a - 45 * s, -395 * h)
        r = np.array([rng.uniform(25, 60), rng.uniform(20, 50), rng.uniform(20, 50)]) * s
        bladder = self.abdominal(Ellipsoid(c, r))
        self.add("bladder wall", bladder, "bowel_wall", 0, label=0)
        self.add("urine", Intersection([bladder, _Inset(bladder, 2.5)]), "bladder_urine", 0, label=0)
        if self.pal.phase == "delayed":  # excreted contrast layers at the back of the bladder
            level = c[1] - rng.uniform(-0.5, 0.8) * r[1]
            lo, hi = bladder.bounds()
            self.add("excreted contrast", Intersection([bladder, _Inset(bladder, 2.5),
                                                        HalfSpace(np.array([0, level, 0]), np.array([0, 1.0, 0]),
                                                                  (lo, hi))]), "urine", 0, label=0)
        if self.pt.female:
            uterus = Ellipsoid(c + np.array([0, -r[1] - 25 * s, 35 * h]), np.array([32, 24, 42]) * s, _rot_x(0.6))
            self.add("uterus", self.abdominal(uterus), "uterus", 6, label=0)
        else:
            self.add("prostate", Ellipsoid(c + np.array([0, -15 * s, -r[2] - 25 * h]), np.array([20, 17, 17]) * s),
                     "prostate", 3, label=0)

    def ascites(self) -> None:
        if self.rng.random() >= (0.5 if self.cirrhotic else 0.05):
            return
        layer = Intersection([Shell(self.pt.cavity, float(self.rng.uniform(8, 30))), self.below])
        self.add("ascites", layer, "bowel_fluid", 2, label=0, only="fat")


@dataclass
class _Network(Shape):
    """Tubes where two smooth fields are both near zero (their zero surfaces meet along curves): a tangle of
    vessels or bowel loops. ``radius`` mm; ``spacing`` the fields' lattice step, which sets the loops' size."""

    f1: LatticeField
    f2: LatticeField
    radius: float
    spacing: float
    box: tuple[np.ndarray, np.ndarray]

    # Field units per mm across a zero surface, measured on these fields (mean gradient ~1.5 per lattice step).
    SLOPE = 1.5

    def bounds(self):
        return self.box

    def distance(self, x, y, z):
        xs, ys, zs = x.ravel(), y.ravel(), z.ravel()
        a, b = self.f1.sample(xs, ys, zs), self.f2.sample(xs, ys, zs)
        return (np.sqrt(a * a + b * b) * np.float32(self.spacing / self.SLOPE) - np.float32(self.radius))


@dataclass
class _Level(Shape):
    """Where a smooth field exceeds ``level`` (patches: gas pockets, fat islands)."""

    field: LatticeField
    level: float
    box: tuple[np.ndarray, np.ndarray]

    def bounds(self):
        return self.box

    def distance(self, x, y, z):
        return (np.float32(self.level) - self.field.sample(x.ravel(), y.ravel(), z.ravel())) * np.float32(
            self.field.spacing / 1.5)


@dataclass
class _Inset(Shape):
    """``shape`` shrunk by ``mm`` (the lumen inside a wall)."""

    shape: Shape
    mm: float

    def bounds(self):
        return self.shape.bounds()

    def distance(self, x, y, z):
        return self.shape.distance(x, y, z) + np.float32(self.mm)


@dataclass
class _ZBand(Shape):
    """Heights ``low`` < t < ``high`` (mm above the dome)."""

    frame: Frame
    low: float
    high: float

    def bounds(self):
        big = 1e5
        return (np.array([-big, -big, self.frame.dome_z + self.low]),
                np.array([big, big, self.frame.dome_z + self.high]))

    def distance(self, x, y, z):
        t = self.frame.t(z)
        return np.maximum(np.float32(self.low) - t, t - np.float32(self.high)).astype(np.float32)


def _mid(a: tuple[float, float, float], b: tuple[float, float, float]) -> tuple[float, float, float]:
    return tuple((x + y) / 2 for x, y in zip(a, b, strict=True))


def _rot_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def _rot_x(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1.0, 0, 0], [0, c, -s], [0, s, c]])


def build_structures(rng: np.random.Generator, patient: Patient, palette: Palette) -> list[Structure]:
    """Every structure of the patient, in painting order."""
    b = _Builder(rng, patient, palette)
    b.table()
    b.arms()
    b.breasts()
    b.layers()
    b.mediastinum()
    b.lung_vessels()
    b.diaphragm_muscle()
    b.mesentery()
    b.small_bowel()
    b.liver()
    b.liver_lesions()
    b.upper_abdomen()
    b.colon()
    b.vessels()
    b.muscles()
    b.spine()
    b.ribs()
    b.sternum_and_scapulae()
    b.pelvis()
    b.pelvic_organs()
    b.ascites()
    return b.out
