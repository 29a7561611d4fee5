# Seeds: one root seed split into independent named random streams, for the whole project.
#
# Strategy: every stream is derived from the root and a name with blake2b (never hash(), which
# is salted per process), so the same root and name give the same sequence on any machine,
# in any process and on any Python version, and different names are independent. The engine,
# the chaos policy, fleets and the pytest plugin all derive their randomness here, each under
# its own name ("engine/<device>/delay", "<device>/<direction>/<fault>", "fleet/device/<i>",
# "<test node id>", ...), which is what makes a run reproducible from the one printed seed.
from __future__ import annotations

import hashlib
import logging
import random
import secrets

from cyncsim.replay.errors import ChaosConfigError

__all__ = ["SeedTree", "draw_root", "root_seed"]

logger = logging.getLogger("cyncsim.seeds")

_PERSON = b"cyncsim.seeds"


def draw_root(what: str) -> int:
    """A fresh random 63-bit root seed, logged (INFO) so that the run can be reproduced."""
    root = secrets.randbits(63)
    logger.info("%s: no seed given, drew root seed %d (pass it to reproduce)", what, root)
    return root


class SeedTree:
    """One root seed split into independent named streams.

    ``stream(name)`` is a fresh random.Random seeded from blake2b(root, name); ``seed(name)``
    is a 63-bit integer to hand to another component as its own root; ``uniform(name)`` is one
    keyed draw in [0, 1) that does not depend on any call order. With ``root=None`` a random
    root is drawn and logged.
    """

    __slots__ = ("root",)

    def __init__(self, root: int | None = None, *, what: str = "cyncsim") -> None:
        if root is None:
            root = draw_root(what)
        elif isinstance(root, bool) or not isinstance(root, int):
            raise ChaosConfigError(f"seed={root!r} must be an integer")
        self.root: int = root

    def __repr__(self) -> str:
        return f"SeedTree({self.root})"

    def derive(self, name: str) -> int:
        """The 128-bit integer derived from root + name."""
        digest = hashlib.blake2b(
            f"{self.root}\x00{name}".encode(), digest_size=16, person=_PERSON
        ).digest()
        return int.from_bytes(digest, "big")

    def seed(self, name: str) -> int:
        """A 63-bit seed for ``name``: the root of another SeedTree, or an argument ``seed=``."""
        return self.derive(name) >> 65

    def stream(self, name: str) -> random.Random:
        return random.Random(self.derive(name))

    def uniform(self, name: str) -> float:
        """One keyed draw in [0, 1) for ``name``, independent of any call order."""
        return (self.derive(name) >> 75) / float(1 << 53)

    def child(self, name: str) -> SeedTree:
        """The tree rooted at ``seed(name)``."""
        return SeedTree(self.seed(name))


def root_seed(seed: int | SeedTree | None, what: str) -> SeedTree:
    """``seed`` as a SeedTree: an int becomes the root, None draws one and logs it."""
    if isinstance(seed, SeedTree):
        return seed
    return SeedTree(seed, what=what)
