"""Moved to :mod:`uniperceiver.utils.lockstep` (decoding, below evaluation, uses it); kept importable here."""
from uniperceiver.utils.lockstep import active, all_done, batches, lockstep  # noqa: F401
