"""Implicit shapes in world millimetres: each gives an approximate signed distance (mm, negative inside) on a
voxel box and the world box outside which it is certainly positive.

The renderer evaluates a shape only inside the part of its bounding box that the current slab covers, and turns
the distance into a partial-volume weight at the edge, so shapes compose by painting (later shapes cover earlier
ones) and by ``Intersection`` (a structure kept inside another).

A box is given as three world coordinate arrays broadcastable to (nx, ny, nz): ``x`` (nx, 1, 1), ``y``
(1, ny, 1), ``z`` (1, 1, nz). Every distance is float32 of the broadcast shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from liverseg.data.anatomy.fields import LatticeField

__all__ = ["Box", "Bumpy", "Ellipsoid", "HalfSpace", "Intersection", "Shape", "Shell", "Tube", "Union", "axis_rotation"]

Box = tuple[np.ndarray, np.ndarray]  # (lo (3,), hi (3,)) world mm


class Shape:
    """A region of space: ``distance`` < 0 inside, > 0 outside, about the distance to the surface in mm."""

    def bounds(self) -> Box:
        raise NotImplementedError

    def distance(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def axis_rotation(direction) -> np.ndarray:
    """A rotation taking the z axis onto ``direction`` (for ellipsoids given by their long axis)."""
    d = np.asarray(direction, dtype=np.float64)
    d = d / np.linalg.norm(d)
    z = np.array([0.0, 0.0, 1.0])
    v, c = np.cross(z, d), float(np.dot(z, d))
    if np.linalg.norm(v) < 1e-9:
        return np.eye(3) if c > 0 else np.diag([1.0, -1.0, -1.0])
    k = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + k + k @ k / (1 + c)


@dataclass
class Ellipsoid(Shape):
    """Centre (3,) mm, semi-axes (3,) mm along the columns of ``rot`` (identity: along x, y, z)."""

    centre: np.ndarray
    radii: np.ndarray
    rot: np.ndarray = field(default_factory=lambda: np.eye(3))

    def bounds(self) -> Box:
        reach = np.sqrt(((self.rot * np.asarray(self.radii)[None, :]) ** 2).sum(axis=1))
        return np.asarray(self.centre) - reach, np.asarray(self.centre) + reach

    def distance(self, x, y, z):
        c = np.asarray(self.centre, dtype=np.float32)
        dx, dy, dz = x - c[0], y - c[1], z - c[2]
        r = self.rot.astype(np.float32)
        inv = 1.0 / np.asarray(self.radii, dtype=np.float32)
        q = [(r[0, i] * dx + r[1, i] * dy + r[2, i] * dz) * inv[i] for i in range(3)]
        n2 = q[0] ** 2 + q[1] ** 2 + q[2] ** 2
        g2 = (q[0] * inv[0]) ** 2 + (q[1] * inv[1]) ** 2 + (q[2] * inv[2]) ** 2
        n = np.sqrt(n2)
        # First-order distance to the surface: (|q| - 1) / |grad |q||, exact on spheres, close near any surface.
        return ((n - 1.0) * n / np.sqrt(np.maximum(g2, 1e-12))).astype(np.float32)


@dataclass
class Tube(Shape):
    """A chain of round cones through ``points`` (n, 3) mm with ``radii`` (n,) mm: vessels, bowel, muscles."""

    points: np.ndarray
    radii: np.ndarray

    def bounds(self) -> Box:
        p, r = np.asarray(self.points), np.asarray(self.radii)[:, None]
        return (p - r).min(axis=0), (p + r).max(axis=0)

    def distance(self, x, y, z):
        shape = np.broadcast_shapes(x.shape, y.shape, z.shape)
        out = np.full(shape, np.inf, dtype=np.float32)
        xs, ys, zs = x.ravel(), y.ravel(), z.ravel()
        for a, b, ra, rb in zip(self.points[:-1], self.points[1:], self.radii[:-1], self.radii[1:], strict=True):
            lo = np.minimum(a - ra, b - rb)
            hi = np.maximum(a + ra, b + rb)
            ix = np.flatnonzero((xs >= lo[0]) & (xs <= hi[0]))
            iy = np.flatnonzero((ys >= lo[1]) & (ys <= hi[1]))
            iz = np.flatnonzero((zs >= lo[2]) & (zs <= hi[2]))
            if not (ix.size and iy.size and iz.size):
                continue
            box = (slice(ix[0], ix[-1] + 1), slice(iy[0], iy[-1] + 1), slice(iz[0], iz[-1] + 1))
            px = xs[box[0]][:, None, None] - np.float32(a[0])
            py = ys[box[1]][None, :, None] - np.float32(a[1])
            pz = zs[box[2]][None, None, :] - np.float32(a[2])
            ab = (b - a).astype(np.float32)
            t = np.clip((px * ab[0] + py * ab[1] + pz * ab[2]) / np.float32(max(float(ab @ ab), 1e-9)), 0, 1)
            d = np.sqrt((px - t * ab[0]) ** 2 + (py - t * ab[1]) ** 2 + (pz - t * ab[2]) ** 2)
            d -= np.float32(ra) + t * np.float32(rb - ra)
            np.minimum(out[box], d, out=out[box])
        return out


@dataclass
class Intersection(Shape):
    """Inside every part: the larger distance wins (a structure clipped by another)."""

    parts: list[Shape]

    def bounds(self) -> Box:
        los, his = zip(*(p.bounds() for p in self.parts), strict=True)
        return np.max(los, axis=0), np.min(his, axis=0)

    def distance(self, x, y, z):
        out = self.parts[0].distance(x, y, z)
        for part in self.parts[1:]:
            out = np.maximum(out, part.distance(x, y, z))
        return out


@dataclass
class Union(Shape):
    """Inside any part: the smaller distance wins."""

    parts: list[Shape]

    def bounds(self) -> Box:
        los, his = zip(*(p.bounds() for p in self.parts), strict=True)
        return np.min(los, axis=0), np.max(his, axis=0)

    def distance(self, x, y, z):
        out = self.parts[0].distance(x, y, z)
        for part in self.parts[1:]:
            out = np.minimum(out, part.distance(x, y, z))
        return out


@dataclass
class Shell(Shape):
    """The layer of ``thickness`` mm just inside ``shape``'s surface (a wall, a cortex)."""

    shape: Shape
    thickness: float

    def bounds(self) -> Box:
        return self.shape.bounds()

    def distance(self, x, y, z):
        d = self.shape.distance(x, y, z)
        return np.maximum(d, -d - np.float32(self.thickness))


@dataclass
class Bumpy(Shape):
    """``shape`` with its surface pushed in and out by a smooth field: ``amplitude`` mm, features ``field``'s
    spacing across. Organs are never exact ellipsoids."""

    shape: Shape
    field: LatticeField
    amplitude: float

    def bounds(self) -> Box:
        lo, hi = self.shape.bounds()
        return lo - 2 * self.amplitude, hi + 2 * self.amplitude

    def distance(self, x, y, z):
        d = self.shape.distance(x, y, z)
        return d + np.float32(self.amplitude) * self.field.sample(x.ravel(), y.ravel(), z.ravel())


@dataclass
class HalfSpace(Shape):
    """Points with ``dot(p - point, normal) < 0`` (``normal`` need not be unit), within ``box``."""

    point: np.ndarray
    normal: np.ndarray
    box: Box

    def bounds(self) -> Box:
        return self.box

    def distance(self, x, y, z):
        n = np.asarray(self.normal, dtype=np.float64)
        n = (n / np.linalg.norm(n)).astype(np.float32)
        p = np.asarray(self.point, dtype=np.float32)
        return ((x - p[0]) * n[0] + (y - p[1]) * n[1] + (z - p[2]) * n[2]).astype(np.float32)
