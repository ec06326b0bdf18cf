"""Model registry in the store: versions, a champion pointer, and a record of every decision.

    models/<version>/model.pt          weights + the profile it was trained with (copied from the run)
    models/<version>/card.json         provenance: run, dataset, training-data manifest hashes, code version,
                                       held-out evaluation (per case and mean), training history summary
    models/<version>/evaluations/<held-out id>.json   this model scored on another held-out set (for gates)
    models/champion.json               {"version": …} — the model inference uses by default
    models/decisions/<time>-<version>.json   why the champion changed or did not (append-only)

A version is the id of the run that trained it, so every model traces back to its run. The champion pointer is
the only object that is ever replaced; the decision log keeps every earlier value, which is what rollback reads.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from liverseg import layout
from liverseg.errors import RegistryError
from liverseg.store import ObjectRef, ObjectStore

DECISIONS = "models/decisions/"


def held_out_id(cases: Mapping[str, Mapping[str, str | None]]) -> str:
    """Identity of a held-out set: its cases and the content hashes of their image and label."""
    blob = json.dumps(cases, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Registry:
    def __init__(self, store: ObjectStore):
        self.store = store

    def model_key(self, version: str) -> str:
        return f"{layout.model_prefix(version)}/model.pt"

    def card_key(self, version: str) -> str:
        return f"{layout.model_prefix(version)}/card.json"

    def evaluation_key(self, version: str, held_out: str) -> str:
        return f"{layout.model_prefix(version)}/evaluations/{held_out}.json"

    # -- versions ------------------------------------------------------------------------------------------
    def register(self, version: str, model_bytes: bytes, card: dict[str, Any]) -> ObjectRef:
        """Store a version once; registering the same content again is a no-op, different content is refused."""
        key = self.model_key(version)
        existing = self.store.stat(key)
        digest = hashlib.sha256(model_bytes).hexdigest()
        if existing is not None:
            if existing.sha256 != digest:
                raise RegistryError(f"model version {version} already exists with other weights")
            return existing
        ref = self.store.put_bytes(key, model_bytes)
        self.store.put_json(self.card_key(version), {**card, "version": version, "model_sha256": digest,
                                                     "registered_at": _now()})
        return ref

    def versions(self) -> list[str]:
        return sorted({r.key.split("/")[1] for r in self.store.list("models/")
                       if r.key.endswith("/card.json") and r.key.count("/") == 2})

    def card(self, version: str) -> dict[str, Any]:
        if self.store.stat(self.card_key(version)) is None:
            raise RegistryError(f"no model version {version!r} (see 'liverseg models list')")
        return self.store.get_json(self.card_key(version))

    def resolve(self, ref: str) -> str:
        """A store key of model weights for ``champion``, a version, or a key that already names a file."""
        if ref == "champion":
            champion = self.champion()
            if champion is None:
                raise RegistryError("the registry has no champion yet: train and promote a model first")
            return self.model_key(champion)
        if ref.endswith(".pt"):
            return ref
        self.card(ref)
        return self.model_key(ref)

    # -- champion ------------------------------------------------------------------------------------------
    def champion(self) -> str | None:
        if self.store.stat(layout.CHAMPION_KEY) is None:
            return None
        return self.store.get_json(layout.CHAMPION_KEY)["version"]

    def decisions(self) -> list[dict[str, Any]]:
        return [self.store.get_json(r.key) for r in self.store.list(DECISIONS)]

    def decide(self, challenger: str, promote: bool, reason: str, evidence: dict[str, Any], *,
               gated_against: str | None) -> dict[str, Any]:
        """Record a decision (always) and move the champion pointer (when promoting).

        ``gated_against`` is the champion the decision was made against; when another promotion has moved the
        pointer since, nothing is written and ``RegistryError`` asks for the gate to run again. (In the cluster the
        promote step also holds a mutex; this catches what slips past it, e.g. two local runs.)
        """
        previous = self.champion()
        if previous != gated_against:
            raise RegistryError(f"the champion moved from {gated_against} to {previous} while {challenger} was "
                                f"being decided: run it again to decide against {previous}")
        decision = {"at": _now(), "challenger": challenger, "previous_champion": previous, "promoted": promote,
                    "champion": challenger if promote else previous, "reason": reason, **evidence}
        self.store.put_json(f"{DECISIONS}{decision['at'].replace(':', '')}-{challenger}.json", decision)
        if promote:
            self.store.put_json(layout.CHAMPION_KEY, {"version": challenger, "since": decision["at"]})
        return decision

    def rollback(self, to: str | None = None) -> dict[str, Any]:
        """Make ``to`` (default: the champion before the current one) the champion again, recorded."""
        current = self.champion()
        if to is None:
            earlier = [d["previous_champion"] for d in self.decisions()
                       if d["promoted"] and d["champion"] == current and d["previous_champion"]]
            if not earlier:
                raise RegistryError(f"no earlier champion to roll back to from {current}")
            to = earlier[-1]
        self.card(to)
        return self.decide(to, True, f"rollback from {current} to {to}", {"rollback": True}, gated_against=current)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
