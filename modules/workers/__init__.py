"""Generation workers on a Ray cluster (``--workers N`` / ``--ray-address ADDRESS``, docs/workers.md).

Without those flags nothing here is imported and jobs run in the app's process. With them, each worker is a Ray
actor owning a full engine (:mod:`.engine`); the app's one queue hands generation jobs to idle workers
(:mod:`.pool`), relays progress and interrupt/skip (:mod:`.relay`), and writes the images the workers return.
:mod:`.messages` holds what travels between the two.
"""
